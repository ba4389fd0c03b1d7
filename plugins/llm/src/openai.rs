//! The `openai` backend: OpenAI-compatible upstreams (work in progress).

use bkg_plugin_sdk::{CallContext, Health};
use serde_json::Value;

use crate::admission::Gate;
use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::params::GenerateParams;

/// The configured upstreams.
pub struct Upstreams;

impl Upstreams {
    pub fn from_config(_config: &LlmConfig) -> Result<Self, String> {
        Err("the openai backend is not available yet".into())
    }

    pub async fn generate(&self, _p: GenerateParams, _gate: &Gate, _ctx: &CallContext) -> Result<Value, LlmError> {
        Err(LlmError::NotReady { message: "the openai backend is not available yet".into(), retry_after_ms: None })
    }

    pub fn models(&self) -> Vec<Value> {
        vec![]
    }

    pub fn health(&self) -> Health {
        Health::serving()
    }
}
