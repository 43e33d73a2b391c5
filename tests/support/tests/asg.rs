//! The lifecycle fake in front of a real moto, through the real autoscaling
//! SDK client: groups and hooks made through the fake (forwarded to moto),
//! actions completed, errors as AWS words them, heartbeats, timeouts.

use std::time::Duration;

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use kraken_testkit::Moto;
use kraken_testkit::asg::{BeginError, EndedBy, LifecycleFake, LifecycleResult, Options};

const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .build();
    Client::from_conf(config)
}

async fn fake(moto: &Moto, time_scale: f64) -> LifecycleFake {
    let options = Options { time_scale };
    LifecycleFake::serve_with("127.0.0.1:0".parse().unwrap(), &moto.endpoint(), options)
        .await
        .unwrap()
}

/// A group of `size` instances with a hook of each transition, made through
/// the fake (so forwarded to moto); returns its instance ids.
async fn group(asg: &Client, name: &str, size: i32, timeout: i32, default: &str) -> Vec<String> {
    asg.create_launch_configuration()
        .launch_configuration_name(format!("{name}-lc"))
        .image_id("ami-12c6146b")
        .instance_type("t3.micro")
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(format!("{name}-lc"))
        .availability_zones("us-east-1a")
        .min_size(size)
        .max_size(size)
        .desired_capacity(size)
        .send()
        .await
        .unwrap();
    for (hook, transition) in [("launch", LAUNCHING), ("terminate", TERMINATING)] {
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(name)
            .lifecycle_hook_name(hook)
            .lifecycle_transition(transition)
            .heartbeat_timeout(timeout)
            .default_result(default)
            .send()
            .await
            .unwrap();
    }
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap();
    let instances = groups.auto_scaling_groups()[0].instances();
    let ids: Vec<String> = instances
        .iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), size as usize);
    ids
}

/// The error's code and message, and the HTTP status.
fn error<E: ProvideErrorMetadata>(
    result: Result<impl std::fmt::Debug, aws_sdk_autoscaling::error::SdkError<E>>,
) -> (u16, String, String) {
    let err = result.unwrap_err();
    let status = err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (
        status,
        err.code().unwrap_or_default().to_owned(),
        err.message().unwrap_or_default().to_owned(),
    )
}

fn validation(message: &str) -> (u16, String, String) {
    (400, "ValidationError".into(), message.into())
}

#[tokio::test]
async fn completes_by_instance_or_token_with_aws_errors() {
    let moto = Moto::start().await;
    let fake = fake(&moto, 1.0).await;
    let asg = client(&fake.endpoint());
    let ids = group(&asg, "web", 2, 300, "ABANDON").await;
    let (a, b) = (&ids[0], &ids[1]);

    // By instance id, CONTINUE.
    let token = fake.begin("web", "launch", a).await.unwrap();
    assert_eq!(uuid_shape(&token), Some(()), "{token}");
    assert_eq!(fake.outcome(a), None, "pending");
    assert_eq!(fake.pending()[0].token, token);
    asg.complete_lifecycle_action()
        .auto_scaling_group_name("web")
        .lifecycle_hook_name("launch")
        .instance_id(a)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .unwrap();
    let outcome = fake.outcome(a).unwrap();
    assert_eq!(
        (outcome.hook.as_str(), outcome.transition.as_str()),
        ("launch", LAUNCHING)
    );
    assert_eq!(outcome.token, token);
    assert_eq!(outcome.result, LifecycleResult::Continue);
    assert_eq!((outcome.by, outcome.heartbeats), (EndedBy::Completed, 0));
    assert!(outcome.seconds < 5.0, "{}", outcome.seconds);

    // Done once: a second completion finds no action.
    let again = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name("web")
        .lifecycle_hook_name("launch")
        .instance_id(a)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await;
    let no_action = format!("No active Lifecycle Action found with instance ID {a}");
    assert_eq!(error(again), validation(&no_action));

    // By token, ABANDON; a wrong token, the wrong hook, an unknown group.
    let token = fake.begin("web", "terminate", b).await.unwrap();
    let complete = |hook: &str, token: &str, group: &str| {
        asg.complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .lifecycle_action_token(token)
            .lifecycle_action_result("ABANDON")
            .send()
    };
    let wrong = "6f3c1a2e-0000-4000-8000-000000000000";
    let no_token = format!("No active Lifecycle Action found with token {wrong}");
    assert_eq!(
        error(complete("terminate", wrong, "web").await),
        validation(&no_token)
    );
    let not_this_hook = format!("No active Lifecycle Action found with token {token}");
    assert_eq!(
        error(complete("launch", &token, "web").await),
        validation(&not_this_hook)
    );
    assert_eq!(
        error(complete("terminate", &token, "nope").await),
        validation("AutoScalingGroup name not found - AutoScalingGroup 'nope' not found")
    );
    assert_eq!(fake.outcome(b), None, "still pending after the errors");
    complete("terminate", &token, "web").await.unwrap();
    let outcome = fake.outcome(b).unwrap();
    assert_eq!(
        (outcome.hook.as_str(), outcome.result),
        ("terminate", LifecycleResult::Abandon)
    );

    // The heartbeat errs the same way once nothing is pending.
    let beat = asg
        .record_lifecycle_action_heartbeat()
        .auto_scaling_group_name("web")
        .lifecycle_hook_name("terminate")
        .instance_id(b)
        .send()
        .await;
    let no_action = format!("No active Lifecycle Action found with instance ID {b}");
    assert_eq!(error(beat), validation(&no_action));
    assert_eq!(fake.outcomes().len(), 2);
}

fn uuid_shape(token: &str) -> Option<()> {
    let parts: Vec<usize> = token.split('-').map(str::len).collect();
    (parts == [8, 4, 4, 4, 12] && token.chars().all(|c| c == '-' || c.is_ascii_hexdigit()))
        .then_some(())
}

#[tokio::test]
async fn begin_needs_moto_s_group_and_hook_and_one_action_per_instance() {
    let moto = Moto::start().await;
    let fake = fake(&moto, 1.0).await;
    let asg = client(&fake.endpoint());
    let ids = group(&asg, "web", 1, 300, "CONTINUE").await;
    assert!(matches!(
        fake.begin("nope", "launch", &ids[0]).await,
        Err(BeginError::NoGroup(g)) if g == "nope"
    ));
    let err = fake.begin("web", "nope", &ids[0]).await.unwrap_err();
    assert!(
        matches!(&err, BeginError::NoHook { hook, .. } if hook == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("PutLifecycleHook"), "{err}");
    fake.begin("web", "launch", &ids[0]).await.unwrap();
    assert!(matches!(
        fake.begin("web", "terminate", &ids[0]).await,
        Err(BeginError::InProgress(_))
    ));
}

/// The wire format itself: form-encoded in, AWS's XML out.
#[tokio::test]
async fn raw_query_answers_are_aws_xml() {
    let moto = Moto::start().await;
    let fake = fake(&moto, 1.0).await;
    let asg = client(&fake.endpoint());
    let ids = group(&asg, "web", 1, 300, "CONTINUE").await;
    let post = |body: String| {
        reqwest::Client::new()
            .post(fake.endpoint())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let base = "Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName=web\
                &LifecycleHookName=launch";
    let resp = post(format!(
        "{base}&InstanceId={}&LifecycleActionResult=CONTINUE",
        ids[0]
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with(
            "<ErrorResponse xmlns=\"https://autoscaling.amazonaws.com/doc/2011-01-01/\">"
        ),
        "{body}"
    );
    assert!(body.contains("<Type>Sender</Type>"), "{body}");
    assert!(body.contains("<Code>ValidationError</Code>"), "{body}");

    fake.begin("web", "launch", &ids[0]).await.unwrap();
    for (body, want) in [
        (
            format!("{base}&InstanceId={}&LifecycleActionResult=MAYBE", ids[0]),
            "MAYBE",
        ),
        (
            format!("{base}&LifecycleActionResult=CONTINUE"),
            "InstanceId or LifecycleActionToken",
        ),
        (
            format!("{base}&InstanceId={}", ids[0]),
            "'lifecycleActionResult'",
        ),
    ] {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(want), "{text}");
    }
    let resp = post(format!(
        "{base}&InstanceId={}&LifecycleActionResult=CONTINUE",
        ids[0]
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains("<CompleteLifecycleActionResult/>"), "{body}");
    assert!(body.contains("<RequestId>"), "{body}");
    // Anything else is moto's own answer (moto tells services apart by the
    // signature's scope).
    let resp = reqwest::Client::new()
        .post(fake.endpoint())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/autoscaling/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body("Action=DescribeAutoScalingGroups&Version=2011-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains(&ids[0]), "{body}");
}

/// A 30 s hook at 1/20 of real time: it times out after 1.5 s unless a
/// heartbeat restarts its 30 s.
#[tokio::test]
async fn heartbeats_extend_and_the_timeout_applies_the_default_result() {
    let moto = Moto::start().await;
    let fake = fake(&moto, 0.05).await;
    let asg = client(&fake.endpoint());
    let ids = group(&asg, "web", 2, 30, "ABANDON").await;
    let id = &ids[0];
    fake.begin("web", "terminate", id).await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1000)).await; // 20 hook seconds
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name("web")
            .lifecycle_hook_name("terminate")
            .instance_id(id)
            .send()
            .await
            .unwrap();
    }
    // 40 s in: without the heartbeats it would have ended at 30 s.
    assert_eq!(fake.outcome(id), None);
    let outcome = fake
        .wait_outcome(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(outcome.by, EndedBy::TimedOut);
    assert_eq!(
        outcome.result,
        LifecycleResult::Abandon,
        "the hook's DefaultResult"
    );
    assert_eq!(outcome.heartbeats, 2);
    // Ends 30 s after the last heartbeat, at about 70 s.
    assert!(
        (68.0..85.0).contains(&outcome.seconds),
        "{}",
        outcome.seconds
    );

    // No heartbeat: 30 s, and the completion comes too late.
    let other = &ids[1];
    fake.begin("web", "launch", other).await.unwrap();
    let outcome = fake
        .wait_outcome(other, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((outcome.by, outcome.heartbeats), (EndedBy::TimedOut, 0));
    assert!(
        (29.0..40.0).contains(&outcome.seconds),
        "{}",
        outcome.seconds
    );
    let late = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name("web")
        .lifecycle_hook_name("launch")
        .instance_id(other)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await;
    assert_eq!(error(late).0, 400);
}

/// Heartbeats cannot hold an action past 100 heartbeat timeouts: a 30 s hook
/// at 1/500 of real time ends at 3000 hook seconds (6 s) however often
/// heartbeats come.
#[tokio::test]
async fn the_global_timeout_caps_heartbeats() {
    let moto = Moto::start().await;
    let fake = fake(&moto, 0.002).await;
    let asg = client(&fake.endpoint());
    let ids = group(&asg, "web", 1, 30, "CONTINUE").await;
    let id = ids[0].clone();
    fake.begin("web", "terminate", &id).await.unwrap();
    let beats = {
        let asg = asg.clone();
        let id = id.clone();
        tokio::spawn(async move {
            // Every 10 hook seconds (20 ms), until refused.
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let sent = asg
                    .record_lifecycle_action_heartbeat()
                    .auto_scaling_group_name("web")
                    .lifecycle_hook_name("terminate")
                    .instance_id(&id)
                    .send()
                    .await;
                if sent.is_err() {
                    return;
                }
            }
        })
    };
    let outcome = fake
        .wait_outcome(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        (outcome.by, outcome.result),
        (EndedBy::TimedOut, LifecycleResult::Continue)
    );
    assert!(
        (2990.0..3300.0).contains(&outcome.seconds),
        "{}",
        outcome.seconds
    );
    assert!(outcome.heartbeats > 50, "{} heartbeats", outcome.heartbeats);
    tokio::time::timeout(Duration::from_secs(5), beats)
        .await
        .unwrap()
        .unwrap();
}
