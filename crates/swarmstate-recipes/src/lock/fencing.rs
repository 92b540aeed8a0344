//! Fencing: the token a lock hands out, and the gate a protected resource keeps so that a stale
//! holder's lower token is refused.

use std::fmt;
use std::sync::Mutex;

use swarmstate_core::Revision;

/// The revision at which a lock was acquired: strictly greater than every earlier holder's.
/// Hand it to a protected resource so it can keep the highest token it has seen and refuse
/// a stale holder's lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub Revision);

impl FencingToken {
    /// The token as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Guards a resource against stale lock holders: it remembers the highest fencing token it
/// has admitted and refuses any lower one. Equal tokens are admitted (one holder may act many
/// times). Keep one gate per protected resource, next to the resource.
#[derive(Debug, Default)]
pub struct FenceGate {
    highest: Mutex<Option<FencingToken>>,
}

/// A [`FenceGate`] refused a token lower than one it had already admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {token} is stale: token {highest} was already admitted")]
pub struct StaleToken {
    /// The token refused.
    pub token: FencingToken,
    /// The highest token admitted so far.
    pub highest: FencingToken,
}

impl FenceGate {
    /// A gate that has admitted nothing.
    pub fn new() -> FenceGate {
        FenceGate::default()
    }

    /// Admits `token` if it is at least the highest admitted so far, and remembers it.
    pub fn admit(&self, token: FencingToken) -> Result<(), StaleToken> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        match *highest {
            Some(seen) if token < seen => Err(StaleToken {
                token,
                highest: seen,
            }),
            _ => {
                *highest = Some(token);
                Ok(())
            }
        }
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self.highest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> FencingToken {
        FencingToken(Revision::new(n).unwrap())
    }

    #[test]
    fn fence_gate_refuses_lower_tokens_and_admits_equal_or_higher() {
        let gate = FenceGate::new();
        assert_eq!(gate.highest(), None);
        gate.admit(token(5)).unwrap();
        gate.admit(token(5)).unwrap();
        let err = gate.admit(token(4)).unwrap_err();
        assert_eq!(
            err,
            StaleToken {
                token: token(4),
                highest: token(5)
            }
        );
        assert!(err.to_string().contains("stale"), "{err}");
        gate.admit(token(9)).unwrap();
        assert!(gate.admit(token(5)).is_err());
        assert_eq!(gate.highest(), Some(token(9)));
    }
}
