//! The client context token. (CONTRACT STUB: being implemented.)

use crate::version::VersionVector;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("malformed context: {0}")]
    Malformed(&'static str),
}

/// The causal context a client reads and passes back, as an opaque printable token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(VersionVector);

impl Context {
    pub fn new(vector: VersionVector) -> Context {
        Context(vector)
    }
    pub fn vector(&self) -> &VersionVector {
        &self.0
    }
    pub fn into_vector(self) -> VersionVector {
        self.0
    }
    pub fn encode(&self) -> String {
        todo!()
    }
    pub fn decode(token: &str) -> Result<Context, ContextError> {
        let _ = token;
        todo!()
    }
}
