//! Name rules shared by agent.toml's `[intent]` defaults and the instance
//! tags they stand in for: a default must pass the rule its tag would.

/// What [`valid_name`] accepts, for error messages.
pub const NAME_FORM: &str = "1-64 characters of A-Z, a-z, 0-9, '-', '_' and '.'";

/// A Nomad datacenter, region or node class, or a meta key.
pub fn valid_name(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Consul's own rule for datacenter names.
pub fn valid_datacenter(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_'))
}
