use crate::dir::TestDir;
use crate::net::free_port;
use crate::peer::{Peer, PeerCommand, moto_server};
use crate::wait::{START_TIMEOUT, get_json, http_client, poll};

/// A moto server (EC2, SSM, STS, IAM, ... in one process) on 127.0.0.1.
///
/// Each instance has its own state; point the AWS SDK at [`Moto::endpoint`].
#[derive(Debug)]
pub struct Moto {
    peer: Peer,
    port: u16,
    // Last: dropped after the peer, so the log is complete when kept.
    dir: TestDir,
}

impl Moto {
    pub async fn start() -> Moto {
        Moto::start_with_env(&[]).await
    }

    /// With extra environment, e.g. `("INITIAL_NO_AUTH_ACTION_COUNT", "0")`
    /// to have moto enforce IAM policies from the first request.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let dir = TestDir::new("moto");
        let bin = moto_server();
        let mut last_err = None;
        // free_port() can race with another process taking the port; a moto
        // that could not bind exits, and another port is tried.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = PeerCommand::new("moto", &bin, dir.path())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Python buffers a redirected stdout: the log would be empty
                // exactly when a test fails and it is wanted.
                .env("PYTHONUNBUFFERED", "1");
            for (k, v) in env {
                cmd = cmd.env(k, v);
            }
            let mut peer = cmd.spawn();
            match wait_ready(&mut peer, port).await {
                Ok(()) => return Moto { peer, port, dir },
                Err(e) => last_err = Some(e),
            }
        }
        panic!("moto did not start: {:#}", last_err.unwrap());
    }

    /// `http://127.0.0.1:<port>`, for the SDK's endpoint override.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forgets all state, as if freshly started.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let url = format!("{}/moto-api/reset", self.endpoint());
        http_client().post(&url).send().await?.error_for_status()?;
        Ok(())
    }

    pub fn peer(&mut self) -> &mut Peer {
        &mut self.peer
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

async fn wait_ready(peer: &mut Peer, port: u16) -> anyhow::Result<()> {
    let client = http_client();
    let url = format!("http://127.0.0.1:{port}/moto-api/data.json");
    // Werkzeug logs this once it has bound the port. Without it, an answer on
    // the port could come from another process's moto that won the race.
    let bound = format!("Running on http://127.0.0.1:{port}");
    let result = poll("moto to answer", START_TIMEOUT, || {
        let alive = peer.check_running();
        let ours = peer.log().contains(&bound);
        let (client, url) = (client.clone(), url.clone());
        async move {
            alive?;
            if !ours {
                return Ok(Err("not listening yet".to_string()));
            }
            Ok(get_json(&client, &url).await.map(drop))
        }
    })
    .await;
    if result.is_err() {
        peer.kill();
    }
    result
}
