//! What a component says of a config section that parses but cannot work: the key at fault
//! and why, in one line. Each component validates its own section (`ForwardConfig::validate`,
//! …); `config` turns the answer into its error and adds the rules that span sections.

/// A key whose value cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Invalid {
    /// The full key, e.g. `forward.udp_sockets`.
    pub key: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Invalid {
        Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// `Err(Invalid)` when `bad` holds.
pub fn check(bad: bool, key: &'static str, reason: impl Into<String>) -> Result<(), Invalid> {
    if bad {
        Err(Invalid::new(key, reason))
    } else {
        Ok(())
    }
}
