//! The operator's own SSM Command document: one fixed script (`assets/host-agent.sh`), a header of
//! constants quoted by `shell-quote`, and two parameters that SSM itself checks: `action` (one of a
//! fixed list) and `digest` (the image digest, `sha256:` and 64 hex digits, or empty). Both are the
//! same for every host of a batch: each host reads the rest of its revision under its own prefix.
//! No value a user controls ever enters the text, so SSM never gets the chance to resolve a
//! `{{ssm:...}}` reference on a tenant's behalf.

use serde_json::json;
use shell_quote::{Bash, Quote};

/// Name of the document the operator owns.
pub const DOCUMENT_NAME: &str = "TenantOperator-HostAgent";

/// The fixed body of the script.
pub const AGENT_SCRIPT: &str = include_str!("../../assets/host-agent.sh");

/// Actions the document accepts.
pub const ACTIONS: &[&str] = &["observe", "apply", "switch", "prune", "inspect-legacy", "adopt", "unadopt"];

/// What SSM lets through as the `digest` parameter.
pub const DIGEST_PATTERN: &str = "^(sha256:[a-f0-9]{64})?$";

/// What the operator fills into the header of the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentConstants {
    /// Parameter Store root; a host reads `<root>/<its org>/...` only.
    pub param_root: String,
    /// Seconds a command may run on the host.
    pub execution_timeout: u32,
}

impl Default for DocumentConstants {
    fn default() -> Self {
        DocumentConstants { param_root: "/tenant-operator".to_string(), execution_timeout: 900 }
    }
}

fn quoted(value: &str) -> String {
    Bash::quote(value)
}

/// The agent version: a short hash of the script and the constants, so a change is a new version.
pub fn agent_version(constants: &DocumentConstants) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(AGENT_SCRIPT.as_bytes());
    h.update(constants.param_root.as_bytes());
    h.update(constants.execution_timeout.to_le_bytes());
    hex::encode(h.finalize())[..12].to_string()
}

/// The script as the host runs it once SSM has substituted the two parameters.
pub fn script(constants: &DocumentConstants) -> String {
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        // SSM substitutes these two; allowedValues / allowedPattern keep them to safe characters.
        "AGENT_ACTION='{{ action }}'".to_string(),
        "AGENT_DIGEST='{{ digest }}'".to_string(),
        format!("AGENT_VERSION={}", quoted(&agent_version(constants))),
        format!("PARAM_ROOT={}", quoted(&constants.param_root)),
    ];
    lines.extend(AGENT_SCRIPT.lines().map(str::to_string));
    lines.join("\n")
}

/// The document content (SSM schema 2.2, JSON).
pub fn content(constants: &DocumentConstants) -> String {
    let lines: Vec<String> = script(constants).lines().map(str::to_string).collect();
    let doc = json!({
        "schemaVersion": "2.2",
        "description": "tenant-operator host agent: observe and apply the revision the operator names; inspect, adopt or release a hand-run container",
        "parameters": {
            "action": {
                "type": "String",
                "description": "What to do",
                "allowedValues": ACTIONS,
            },
            "digest": {
                "type": "String",
                "description": "Image digest to apply (the rest of the revision is under the host's own prefix); empty but for apply and adopt",
                "default": "",
                "allowedPattern": DIGEST_PATTERN,
            },
        },
        "mainSteps": [{
            "action": "aws:runShellScript",
            "name": "hostAgent",
            "precondition": {"StringEquals": ["platformType", "Linux"]},
            "inputs": {
                "runCommand": lines,
                "timeoutSeconds": constants.execution_timeout.to_string(),
            },
        }],
    });
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_are_quoted_and_parameters_constrained() {
        let c = DocumentConstants { param_root: "/x'; rm -rf / #".into(), execution_timeout: 60 };
        let s = script(&c);
        assert!(s.contains("PARAM_ROOT=$'/x\\'; rm -rf / #'") || s.contains("PARAM_ROOT='/x'\\''; rm -rf / #'"), "{s}");
        let doc: serde_json::Value = serde_json::from_str(&content(&c)).unwrap();
        assert_eq!(doc["parameters"]["digest"]["allowedPattern"], "^(sha256:[a-f0-9]{64})?$");
        assert_eq!(doc["parameters"].as_object().unwrap().len(), 2);
        assert_eq!(doc["parameters"]["action"]["allowedValues"].as_array().unwrap().len(), ACTIONS.len());
        // The only `{{ }}` in the whole document are the two declared parameters.
        let text = content(&c);
        let refs: Vec<&str> = text.match_indices("{{").map(|(i, _)| &text[i..i + 14]).collect();
        assert!(refs.iter().all(|r| r.starts_with("{{ action }}") || r.starts_with("{{ digest }}")), "{refs:?}");
    }
}
