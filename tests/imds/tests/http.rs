//! The fake's HTTP behaviour, checked on the wire with a minimal HTTP/1.1
//! client so that every status and header is visible.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kraken_fake_imds::{Config, FakeImds, FakeImdsHandle, IamRole, InstanceData, TokenMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn token(addr: SocketAddr) -> String {
    let reply = request(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
    )
    .await;
    assert_eq!(reply.status, 200);
    reply.body
}

async fn get(addr: SocketAddr, token: &str, path: &str) -> Reply {
    request(addr, "GET", path, &[("X-aws-ec2-metadata-token", token)]).await
}

fn data() -> InstanceData {
    InstanceData {
        tags: [("kraken:cluster", "blue"), ("Name", "node-1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ..InstanceData::default()
    }
}

async fn start(data: InstanceData) -> FakeImdsHandle {
    FakeImds::start("127.0.0.1:0".parse().unwrap(), data)
        .await
        .unwrap()
}

#[tokio::test]
async fn token_requests_are_validated_like_aws() {
    let imds = start(data()).await;
    let addr = imds.addr();
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds";
    for bad in ["0", "21601", "-5", "abc", ""] {
        let reply = request(addr, "PUT", "/latest/api/token", &[(ttl, bad)]).await;
        assert_eq!(reply.status, 400, "TTL {bad:?}");
    }
    assert_eq!(
        request(addr, "PUT", "/latest/api/token", &[]).await.status,
        400
    );
    let proxied = [(ttl, "60"), ("X-Forwarded-For", "10.0.0.9")];
    assert_eq!(
        request(addr, "PUT", "/latest/api/token", &proxied)
            .await
            .status,
        403
    );
    assert_eq!(
        request(addr, "GET", "/latest/api/token", &[(ttl, "60")])
            .await
            .status,
        405
    );
    assert_eq!(
        request(addr, "POST", "/latest/api/token", &[(ttl, "60")])
            .await
            .status,
        405
    );

    let reply = request(addr, "PUT", "/latest/api/token", &[(ttl, "21600")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers[ttl.to_ascii_lowercase().as_str()], "21600");
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert!(reply.body.len() >= 32);
    assert_ne!(reply.body, token(addr).await, "tokens are unique");
    assert_eq!(imds.stats().token_puts, 9, "PUTs only");
}

#[tokio::test]
async fn metadata_requires_a_valid_token() {
    let imds = start(data()).await;
    let addr = imds.addr();
    let path = "/latest/meta-data/instance-id";
    assert_eq!(request(addr, "GET", path, &[]).await.status, 401);
    assert_eq!(get(addr, "not-a-token", path).await.status, 401);
    assert_eq!(request(addr, "GET", "/latest/nope", &[]).await.status, 401);

    let token = token(addr).await;
    let reply = get(addr, &token, path).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "i-0123456789abcdef0")
    );
    let left: u64 = reply.headers["x-aws-ec2-metadata-token-ttl-seconds"]
        .parse()
        .unwrap();
    assert!((290..=300).contains(&left), "{left}s left");
    assert_eq!(
        get(addr, &token, "/latest/meta-data/nope").await.status,
        404
    );
    assert_eq!(get(addr, &token, "/latest/user-data").await.status, 404);
    let post = request(addr, "POST", path, &[("X-aws-ec2-metadata-token", &token)]).await;
    assert_eq!(post.status, 405);

    imds.invalidate_tokens();
    assert_eq!(get(addr, &token, path).await.status, 401);
    assert_eq!(get(addr, &self::token(addr).await, path).await.status, 200);
    let stats = imds.stats();
    assert_eq!(stats.unauthorized, 4);
    assert_eq!(stats.path(path), 6);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let imds = start(data()).await;
    let addr = imds.addr();
    let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "1")];
    let token = request(addr, "PUT", "/latest/api/token", &ttl).await.body;
    assert_eq!(
        get(addr, &token, "/latest/meta-data/ami-id").await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(addr, &token, "/latest/meta-data/ami-id").await.status,
        401
    );
}

#[tokio::test]
async fn optional_mode_serves_imdsv1_but_refuses_bad_tokens() {
    let imds = start(data()).await;
    imds.set_token_mode(TokenMode::Optional);
    let addr = imds.addr();
    let reply = request(addr, "GET", "/latest/meta-data/local-ipv4", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "10.0.1.10"));
    assert!(
        !reply
            .headers
            .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
    );
    assert_eq!(
        get(addr, "stale", "/latest/meta-data/local-ipv4")
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn serves_the_documented_tree() {
    let mut data = data();
    data.region = "eu-west-1".into();
    data.availability_zone = "eu-west-1b".into();
    data.iam_role = Some(IamRole {
        name: "kraken-node".into(),
        access_key_id: "AKIAFAKE".into(),
        secret_access_key: "fake-secret".into(),
        token: "fake-session".into(),
    });
    let imds = start(data).await;
    let addr = imds.addr();
    let token = token(addr).await;
    let body = |path: &'static str| {
        let token = token.clone();
        async move {
            let reply = get(addr, &token, path).await;
            assert_eq!(reply.status, 200, "{path}");
            reply.body
        }
    };
    let listing = "ami-id\nhostname\niam/\ninstance-id\ninstance-type\nlocal-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\ntags/";
    assert_eq!(body("/latest/meta-data/").await, listing);
    assert_eq!(body("/latest/meta-data").await, listing);
    assert_eq!(
        body("/latest/meta-data/placement/").await,
        "availability-zone\nregion"
    );
    assert_eq!(
        body("/latest/meta-data/placement/region").await,
        "eu-west-1"
    );
    assert_eq!(
        body("/latest/meta-data/placement/availability-zone").await,
        "eu-west-1b"
    );
    assert_eq!(
        body("/latest/meta-data/local-hostname").await,
        "ip-10-0-1-10.eu-west-1.compute.internal"
    );
    assert_eq!(body("/latest/meta-data/mac").await, "0e:00:0a:00:01:0a");
    assert_eq!(
        body("/latest/meta-data/network/interfaces/macs/").await,
        "0e:00:0a:00:01:0a/"
    );
    assert_eq!(
        body("/latest/meta-data/network/interfaces/macs/0e:00:0a:00:01:0a/").await,
        "device-number\ninterface-id\nlocal-hostname\nlocal-ipv4s\nmac\nowner-id\nsubnet-id\nvpc-id"
    );
    let interface =
        |leaf: &str| format!("/latest/meta-data/network/interfaces/macs/0e:00:0a:00:01:0a/{leaf}");
    for (leaf, want) in [
        ("vpc-id", "vpc-0123456789abcdef0"),
        ("subnet-id", "subnet-0123456789abcdef0"),
        ("local-ipv4s", "10.0.1.10"),
        ("mac", "0e:00:0a:00:01:0a"),
        ("device-number", "0"),
        ("owner-id", "123456789012"),
    ] {
        let reply = get(addr, &token, &interface(leaf)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, want), "{leaf}");
    }
    assert_eq!(body("/latest/meta-data/tags/").await, "instance/");
    assert_eq!(
        body("/latest/meta-data/tags/instance").await,
        "Name\nkraken:cluster"
    );
    assert_eq!(
        body("/latest/meta-data/tags/instance/kraken:cluster").await,
        "blue"
    );
    assert_eq!(
        body("/latest/meta-data/iam/").await,
        "info\nsecurity-credentials/"
    );
    assert_eq!(
        body("/latest/meta-data/iam/security-credentials/").await,
        "kraken-node"
    );

    let creds: serde_json::Value =
        serde_json::from_str(&body("/latest/meta-data/iam/security-credentials/kraken-node").await)
            .unwrap();
    assert_eq!(creds["Code"], "Success");
    assert_eq!(creds["Type"], "AWS-HMAC");
    assert_eq!(creds["AccessKeyId"], "AKIAFAKE");
    assert_eq!(creds["SecretAccessKey"], "fake-secret");
    assert_eq!(creds["Token"], "fake-session");
    let expiration = humantime::parse_rfc3339(creds["Expiration"].as_str().unwrap()).unwrap();
    assert!(expiration > std::time::SystemTime::now() + Duration::from_secs(3600));
    let info: serde_json::Value =
        serde_json::from_str(&body("/latest/meta-data/iam/info").await).unwrap();
    assert_eq!(
        info["InstanceProfileArn"],
        "arn:aws:iam::123456789012:instance-profile/kraken-node"
    );

    let doc: serde_json::Value =
        serde_json::from_str(&body("/latest/dynamic/instance-identity/document").await).unwrap();
    assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
    assert_eq!(doc["privateIp"], "10.0.1.10");
    assert_eq!(doc["region"], "eu-west-1");
    assert_eq!(doc["availabilityZone"], "eu-west-1b");
    assert_eq!(doc["accountId"], "123456789012");
    assert_eq!(doc["version"], "2017-09-30");
    assert!(humantime::parse_rfc3339(doc["pendingTime"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn tags_follow_the_instance_metadata_tags_option() {
    let imds = start(InstanceData::default()).await;
    let addr = imds.addr();
    let token = token(addr).await;
    let tags = "/latest/meta-data/tags/instance";
    let reply = get(addr, &token, tags).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, ""),
        "enabled, no tags"
    );
    assert!(imds.instance_data().iam_role.is_none());
    assert_eq!(
        get(addr, &token, "/latest/meta-data/iam/").await.status,
        404
    );

    imds.update_instance_data(|d| {
        d.tags.insert("role".into(), "consul-server".into());
    })
    .unwrap();
    assert_eq!(
        get(addr, &token, "/latest/meta-data/tags/instance/role")
            .await
            .body,
        "consul-server"
    );

    imds.update_instance_data(|d| d.tags_in_metadata = false)
        .unwrap();
    for path in [
        tags,
        "/latest/meta-data/tags/",
        "/latest/meta-data/tags/instance/role",
    ] {
        assert_eq!(get(addr, &token, path).await.status, 404, "{path}");
    }
    assert!(
        !get(addr, &token, "/latest/meta-data/")
            .await
            .body
            .contains("tags")
    );

    // AWS will not enable metadata tags while a key is not a valid path segment.
    let bad = imds.update_instance_data(|d| {
        d.tags.insert("a/b".into(), "x".into());
        d.tags_in_metadata = true;
    });
    assert!(bad.is_err());
    assert!(
        !imds.instance_data().tags_in_metadata,
        "a refused update changes nothing"
    );
    // Nor can an instance have a VPC or subnet id of another form.
    for change in [
        (|d: &mut InstanceData| d.vpc_id = "subnet-0abc".into()) as fn(&mut InstanceData),
        |d| d.vpc_id = "vpc-".into(),
        |d| d.subnet_id = String::new(),
    ] {
        assert!(imds.update_instance_data(change).is_err());
    }
    assert_eq!(imds.instance_data().vpc_id, "vpc-0123456789abcdef0");
}

#[tokio::test]
async fn injected_failures_delays_and_hangs() {
    let imds = start(data()).await;
    let addr = imds.addr();
    let token = token(addr).await;
    let path = "/latest/meta-data/instance-id";

    imds.fail_next(2, 503);
    assert_eq!(get(addr, &token, path).await.status, 503);
    assert_eq!(get(addr, &token, path).await.status, 503);
    assert_eq!(get(addr, &token, path).await.status, 200);

    imds.set_delay(
        Duration::from_millis(400),
        Some("/latest/meta-data/placement"),
    );
    let started = Instant::now();
    assert_eq!(get(addr, &token, path).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "other paths are not delayed"
    );
    let started = Instant::now();
    assert_eq!(
        get(addr, &token, "/latest/meta-data/placement/region")
            .await
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    imds.set_delay(Duration::ZERO, None);

    imds.set_hang(true);
    let pending = tokio::spawn(async move { get(addr, &token, path).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a hung service does not answer");
    imds.set_hang(false);
    let reply = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.status, 200,
        "the held request is answered once the hang ends"
    );
    assert!(!imds.faults().hang);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_service() {
    let imds = start(data()).await;
    let addr = imds.addr();
    imds.set_hang(true);
    let pending = tokio::spawn(request(addr, "GET", "/latest/meta-data/", &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(imds);
    let reply = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 503);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn binary_serves_its_config_logs_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("kraken-fake-imds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("instance.json");
    let config = Config {
        instance: data(),
        faults: kraken_fake_imds::Faults {
            fail_count: 1,
            fail_status: 500,
            ..Default::default()
        },
        ..Config::default()
    };
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kraken-fake-imds"))
        .args(["--bind", "127.0.0.1:0", "--instance"])
        .arg(&config_path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr: SocketAddr = loop {
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        let n = tokio::time::timeout(Duration::from_secs(10), stderr.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "exited early: {log}");
        log.push_str(&line);
        if let Some(addr) = line.trim().rsplit_once("listening on ") {
            break addr.1.parse().unwrap();
        }
    };
    let ttl = [("X-aws-ec2-metadata-token-ttl-seconds", "60")];
    assert_eq!(
        request(addr, "PUT", "/latest/api/token", &ttl).await.status,
        500,
        "configured fault"
    );
    let token = request(addr, "PUT", "/latest/api/token", &ttl).await.body;
    let reply = get(addr, &token, "/latest/meta-data/tags/instance/Name").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "node-1"));

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    stderr.read_to_string(&mut log).await.unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("PUT /latest/api/token 500"), "{log}");
    assert!(
        log.contains("GET /latest/meta-data/tags/instance/Name 200"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token is never logged");
    std::fs::remove_dir_all(&dir).unwrap();
}
