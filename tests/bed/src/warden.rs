//! Nothing of the test bed outlives the process that started it.
//!
//! Every process the test bed starts carries `TESTBED_RUN=<id>` in its environment ([`mark`]), and
//! inherits it to whatever it starts in turn (the simulated hosts' routers included). A simulated
//! container's environment is the container's own, so those are found by their command line,
//! which names the run's directory (`.testbed/runs/<millis>-<pid>-…`, see
//! [`crate::stack::new_run_dir`]). [`ensure`] starts `tests/bed/warden.py` once per process, in a
//! session of its own (so a Ctrl-C to the terminal does not reach it): it waits until this process
//! has exited, however it ended, and then kills both kinds.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

/// The environment variable that marks the test bed's processes.
pub const MARKER: &str = "TESTBED_RUN";

static RUN: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// Starts the warden for this process (once); returns this process's run id.
pub fn ensure() -> Result<&'static str> {
    let run = RUN.get_or_init(|| start().map_err(|e| format!("{e:#}")));
    run.as_deref().map_err(|e| anyhow!("starting the test bed's warden: {e}"))
}

fn start() -> Result<String> {
    use std::os::unix::process::CommandExt;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let script = crate::stack::repo_root().join("tests/bed/warden.py");
    Command::new("python3")
        .arg(&script)
        .arg(std::process::id().to_string())
        .arg(&id)
        .arg(crate::stack::repo_root().join(".testbed/runs"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running python3 {}", script.display()))?;
    Ok(id)
}

/// The marker's (name, value) for a process about to be started (starting the warden if needed).
pub fn env() -> Result<(&'static str, &'static str)> {
    Ok((MARKER, ensure()?))
}

/// Marks a command (std) so the warden reaps it; a no-op if the warden could not start.
pub fn mark(cmd: &mut Command) {
    if let Ok((k, v)) = env() {
        cmd.env(k, v);
    }
}
