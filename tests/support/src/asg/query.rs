//! The autoscaling API on the wire (awsQuery: form-encoded parameters, XML
//! answers): the two lifecycle actions answered here, the rest forwarded to
//! moto as it came.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::actions::{LifecycleResult, Missing};

/// The namespace of Auto Scaling's XML answers (API version 2011-01-01).
const XMLNS: &str = "https://autoscaling.amazonaws.com/doc/2011-01-01/";

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // awsQuery puts the parameters in a POST body; a GET carries them in
    // the query string. Either way `Action` names the call.
    let mut params: HashMap<String, String> = HashMap::new();
    let query = uri.query().unwrap_or_default().as_bytes();
    for (k, v) in form_urlencoded::parse(query).chain(form_urlencoded::parse(&body)) {
        params.insert(k.into_owned(), v.into_owned());
    }
    let result = match params.get("Action").map(String::as_str) {
        Some("CompleteLifecycleAction") => complete(&shared, &params).await,
        Some("RecordLifecycleActionHeartbeat") => heartbeat(&shared, &params).await,
        _ => return forward(&shared, method, &uri, headers, body).await,
    };
    let action = &params["Action"];
    match result {
        Ok(()) => xml(
            StatusCode::OK,
            format!(
                "<{action}Response xmlns=\"{XMLNS}\">\n  <{action}Result/>\n  \
                 <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n\
                 </{action}Response>\n",
                uuid::Uuid::new_v4()
            ),
        ),
        Err(message) => validation_error(&message),
    }
}

/// The parameters common to both calls; `Err` is a ValidationError message.
struct Target<'a> {
    group: &'a str,
    hook: &'a str,
    token: Option<&'a str>,
    instance_id: Option<&'a str>,
}

/// AWS's wording for a missing required member (the SDK checks them too,
/// so only raw callers meet it).
fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
    match params.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => {
            let member = format!("{}{}", name[..1].to_ascii_lowercase(), &name[1..]);
            Err(format!(
                "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
            ))
        }
    }
}

fn target(params: &HashMap<String, String>) -> Result<Target<'_>, String> {
    let optional = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let target = Target {
        group: required(params, "AutoScalingGroupName")?,
        hook: required(params, "LifecycleHookName")?,
        token: optional("LifecycleActionToken"),
        instance_id: optional("InstanceId"),
    };
    if target.token.is_none() && target.instance_id.is_none() {
        // Our wording: AWS needs one of the two but its message is not
        // documented.
        return Err("Either InstanceId or LifecycleActionToken must be specified".into());
    }
    Ok(target)
}

/// The error for an action that was not found. The "No active Lifecycle
/// Action found with ..." sentences are AWS's own, as its ValidationError
/// answers read in the field (e.g. aws-node-termination-handler's and
/// Spacelift's logs: "No active Lifecycle Action found with token <uuid>",
/// "... with instance ID i-..."). An unknown hook has no action, so it gets
/// the same sentence. For an unknown group, AWS's group-scoped calls answer
/// "AutoScalingGroup name not found - ..."; moto words it so for
/// DeleteAutoScalingGroup, and so do we (the exact text for these two calls
/// is not published).
async fn missing(shared: &Shared, group: &str, missing: Missing) -> String {
    if let Ok(false) = shared.moto.group_exists(group).await {
        return format!("AutoScalingGroup name not found - AutoScalingGroup '{group}' not found");
    }
    match missing {
        Missing::Token(token) => format!("No active Lifecycle Action found with token {token}"),
        Missing::Instance(id) => format!("No active Lifecycle Action found with instance ID {id}"),
    }
}

async fn complete(shared: &Shared, params: &HashMap<String, String>) -> Result<(), String> {
    let t = target(params)?;
    let text = required(params, "LifecycleActionResult")?;
    let result = LifecycleResult::parse(text).ok_or_else(|| {
        // Our wording; the API reference lists CONTINUE and ABANDON only.
        format!("Invalid LifecycleActionResult {text:?}: valid values are CONTINUE and ABANDON")
    })?;
    match (shared.actions).complete(t.group, t.hook, t.token, t.instance_id, result) {
        Ok(()) => Ok(()),
        Err(m) => Err(missing(shared, t.group, m).await),
    }
}

async fn heartbeat(shared: &Shared, params: &HashMap<String, String>) -> Result<(), String> {
    let t = target(params)?;
    match (shared.actions).heartbeat(t.group, t.hook, t.token, t.instance_id) {
        Ok(()) => Ok(()),
        Err(m) => Err(missing(shared, t.group, m).await),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Auto Scaling's error document: HTTP 400, `Sender` fault.
fn validation_error(message: &str) -> Response {
    xml(
        StatusCode::BAD_REQUEST,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>Sender</Type>\n    \
             <Code>ValidationError</Code>\n    <Message>{}</Message>\n  </Error>\n  \
             <RequestId>{}</RequestId>\n</ErrorResponse>\n",
            escape(message),
            uuid::Uuid::new_v4()
        ),
    )
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// Sends the request to moto as it came (method, path, query, headers,
/// body) and moto's answer back as it came.
async fn forward(
    shared: &Shared,
    method: Method,
    uri: &Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", shared.moto.endpoint);
    // reqwest sets these for its own connection.
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONNECTION);
    let sent = (shared.moto.http)
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            let text = format!("lifecycle fake: moto at {url} unreachable: {e}");
            return (StatusCode::BAD_GATEWAY, text).into_response();
        }
    };
    let status = answer.status();
    let mut out_headers = answer.headers().clone();
    out_headers.remove(header::TRANSFER_ENCODING);
    out_headers.remove(header::CONTENT_LENGTH);
    out_headers.remove(header::CONNECTION);
    match answer.bytes().await {
        Ok(bytes) => (status, out_headers, bytes).into_response(),
        Err(e) => {
            let text = format!("lifecycle fake: reading moto's answer failed: {e}");
            (StatusCode::BAD_GATEWAY, text).into_response()
        }
    }
}
