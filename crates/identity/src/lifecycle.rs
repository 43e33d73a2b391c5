//! What IMDS says about the instance's future: the autoscaling lifecycle
//! state it is heading for, and a spot interruption notice.

use std::time::SystemTime;

use aws_smithy_types::date_time::{DateTime, Format};
use serde::Deserialize;

use crate::error::IdentityError;
use crate::imds::ImdsIdentity;

const TARGET_STATE_PATH: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const SPOT_ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";

/// `autoscaling/target-lifecycle-state`: where the autoscaling group is
/// taking this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    InService,
    /// `Terminated`: scale-in, an instance refresh, a health replacement;
    /// also `Warmed:Terminated`, an instance leaving the warm pool for
    /// good (the node does the same: it leaves what it joined, if anything,
    /// and completes the terminating hook).
    Terminated,
    /// `Warmed:Stopped`, `Warmed:Running`, `Warmed:Hibernated`: a warm pool.
    Warmed(String),
    /// `Detached`, `Standby` and whatever AWS adds later.
    Other(String),
}

impl TargetState {
    pub fn parse(text: &str) -> TargetState {
        match text.trim() {
            "InService" => TargetState::InService,
            "Terminated" | "Warmed:Terminated" => TargetState::Terminated,
            s if s.starts_with("Warmed:") => TargetState::Warmed(s.to_owned()),
            s => TargetState::Other(s.to_owned()),
        }
    }
}

/// `spot/instance-action`: the two-minute notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotNotice {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When EC2 takes the instance.
    pub time: SystemTime,
}

impl ImdsIdentity {
    /// `None` when the instance is in no autoscaling group (IMDS answers
    /// 404).
    pub async fn target_lifecycle_state(&self) -> Result<Option<TargetState>, IdentityError> {
        Ok(self
            .get_optional(TARGET_STATE_PATH)
            .await?
            .map(|s| TargetState::parse(&s)))
    }

    /// `None` while no interruption is scheduled (IMDS answers 404).
    pub async fn spot_notice(&self) -> Result<Option<SpotNotice>, IdentityError> {
        let Some(text) = self.get_optional(SPOT_ACTION_PATH).await? else {
            return Ok(None);
        };
        parse_spot(&text).map(Some)
    }
}

pub(crate) fn parse_spot(text: &str) -> Result<SpotNotice, IdentityError> {
    #[derive(Deserialize)]
    struct Doc {
        action: String,
        time: String,
    }
    let bad = || IdentityError::ImdsValue {
        path: SPOT_ACTION_PATH.into(),
        value: text.chars().take(200).collect(),
        expected: r#"{"action": "terminate|stop|hibernate", "time": "<RFC 3339 UTC>"}"#,
    };
    let doc: Doc = serde_json::from_str(text).map_err(|_| bad())?;
    let time = DateTime::from_str(&doc.time, Format::DateTime).map_err(|_| bad())?;
    let time = SystemTime::try_from(time).map_err(|_| bad())?;
    Ok(SpotNotice {
        action: doc.action,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_as_aws_names_them() {
        assert_eq!(TargetState::parse("InService"), TargetState::InService);
        assert_eq!(TargetState::parse("Terminated\n"), TargetState::Terminated);
        assert_eq!(
            TargetState::parse("Warmed:Terminated"),
            TargetState::Terminated
        );
        assert_eq!(
            TargetState::parse("Warmed:Stopped"),
            TargetState::Warmed("Warmed:Stopped".into())
        );
        assert_eq!(
            TargetState::parse("Detached"),
            TargetState::Other("Detached".into())
        );
    }

    #[test]
    fn spot_notice_as_documented() {
        let n = parse_spot(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#).unwrap();
        assert_eq!(n.action, "terminate");
        let secs = n
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 1_505_722_920);
        let err = parse_spot("soon").unwrap_err().to_string();
        assert!(err.contains("spot/instance-action"), "{err}");
    }
}
