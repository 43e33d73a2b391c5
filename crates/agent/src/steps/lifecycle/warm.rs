//! Warm pools. An instance launched into a group's warm pool
//! (`Warmed:Stopped`, `Warmed:Running`, `Warmed:Hibernated`) prepares what
//! needs no cluster: identity, secrets, certificates, configs, Docker and
//! the images `lifecycle.warm_images` names. It never starts Consul or
//! Nomad, so it joins nothing, and completes the launching hook so the
//! group can stop or keep it. When the group puts it in service, the target
//! state turns `InService`: a running instance notices within
//! [`WARM_POLL`], a stopped one boots with everything on disk, and either
//! joins as any node does, the launching hook completed again once it
//! serves.

use std::time::Duration;

use kraken_identity::{ImdsIdentity, TargetState};

/// IMDS is local and free to ask: a second between polls is most of the
/// time from `InService` to a joined node that this step can save.
pub const WARM_POLL: Duration = Duration::from_secs(1);

/// The warm state (`Warmed:Running`, ...) when the instance is in a warm
/// pool. An IMDS that fails is taken as "not warm": a node that joins by
/// mistake is serving capacity, one that waits by mistake is lost.
pub async fn warmed(imds: &ImdsIdentity) -> Option<String> {
    match imds.target_lifecycle_state().await {
        Ok(Some(TargetState::Warmed(state))) => Some(state),
        Ok(_) => None,
        Err(e) => {
            log::warn!(
                "lifecycle: IMDS target lifecycle state: {e}; not treating the node as warm"
            );
            None
        }
    }
}

/// Returns once the instance has left the warm pool (any state but
/// `Warmed:*`). `Warmed:Terminated` reads as `Terminated`, which the
/// departure watcher acts on; this returns for it too.
pub async fn until_in_service(imds: &ImdsIdentity) -> String {
    loop {
        match imds.target_lifecycle_state().await {
            Ok(Some(TargetState::Warmed(_))) => {}
            Ok(Some(state)) => return format!("{state:?}"),
            Ok(None) => return "no autoscaling group".into(),
            Err(e) => log::debug!("lifecycle: IMDS target lifecycle state: {e}"),
        }
        tokio::time::sleep(WARM_POLL).await;
    }
}

/// Pulls each image with the Docker CLI. A failure is reported and the
/// node goes on: Nomad pulls what is missing when it places a task, so a
/// pull that failed costs time later, never the node.
pub async fn pull_images(docker: &str, images: &[String]) -> Vec<Pulled> {
    let mut pulled = Vec::new();
    for image in images {
        let started = std::time::Instant::now();
        let out = tokio::process::Command::new(docker)
            .args(["pull", "--quiet", image])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let error = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "{docker} pull {image}: {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("{docker} pull {image}: not run: {e}")),
        };
        match &error {
            None => log::info!("lifecycle: warm: pulled {image}"),
            Some(e) => log::warn!("lifecycle: warm: {e}; Nomad pulls it when it needs it"),
        }
        pulled.push(Pulled {
            image: image.clone(),
            seconds: started.elapsed().as_secs_f64(),
            error,
        });
    }
    pulled
}

#[derive(Debug, serde::Serialize)]
pub struct Pulled {
    pub image: String,
    pub seconds: f64,
    pub error: Option<String>,
}
