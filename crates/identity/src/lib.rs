//! Step 1 of the boot flow: who is this instance?
//!
//! An [`Identity`] is what IMDS knows about the instance: its id, region,
//! zone, private address and tags. [`ImdsIdentity`] reads it through the AWS
//! SDK's IMDSv2 client (so `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it
//! elsewhere, as tests do); when instance metadata tags are disabled it falls
//! back to `ec2:DescribeInstances` on the instance itself.

mod error;
mod identity;
mod imds;
mod lifecycle;

pub use error::IdentityError;
pub use identity::{Identity, IdentityProvider, StaticIdentity, TagsSource};
pub use imds::{ImdsIdentity, ImdsSettings};
pub use lifecycle::{SpotNotice, TargetState};
