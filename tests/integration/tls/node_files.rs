//! What the booted node left on disk.

use crate::common::node::Node;

pub(super) fn read(node: &Node, path: &str) -> String {
    std::fs::read_to_string(node.dir.path().join(path)).unwrap()
}

pub(super) fn pid(node: &Node, unit: &str) -> String {
    read(node, &format!("{unit}.pid")).trim().to_owned()
}
