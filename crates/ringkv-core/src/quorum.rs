//! Quorum bookkeeping for one client request. (CONTRACT STUB: being implemented.)

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("quorum must be between 1 and N={n}, got {got}")]
    OutOfRange { got: u32, n: u8 },
}

/// R or W: a number of replicas in 1..=N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quorum(u8);

impl Quorum {
    pub fn new(value: u32, n: u8) -> Result<Quorum, QuorumError> {
        if value >= 1 && value <= n as u32 { Ok(Quorum(value as u8)) } else { Err(QuorumError::OutOfRange { got: value, n }) }
    }
    pub fn get(self) -> usize {
        self.0 as usize
    }
}
