//! Running the system programs `lb` drives (`nft`, `ip`): one place that turns a missing program, a failed exit
//! and its error output into a [`DataplaneError`] an operator can act on.

use crate::dataplane::DataplaneError;
use std::io::Write;
use std::process::{Command, Stdio};

/// A system program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Program name, looked up on `PATH`.
    pub program: &'static str,
    /// Package to install when it is missing.
    pub package: &'static str,
}

/// nftables' command-line program.
pub const NFT: Tool = Tool { program: "nft", package: "nftables" };
/// iproute2's `ip`.
pub const IP: Tool = Tool { program: "ip", package: "iproute2" };

impl Tool {
    /// Runs the program with `args`, feeding `stdin`; returns its standard output, or the failure with its
    /// arguments, exit status and error output.
    pub fn run(self, args: &[&str], stdin: Option<&str>) -> Result<String, DataplaneError> {
        let mut child = Command::new(self.program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => DataplaneError::Missing { program: self.program, package: self.package },
                _ => DataplaneError::Tool { program: self.program, detail: format!("could not start: {err}"), retryable: true },
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means the program exited early; its status and error output below say why.
            let _ = pipe.write_all(input.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|err| DataplaneError::Tool { program: self.program, detail: err.to_string(), retryable: true })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let detail = format!("`{} {}` exited with {}: {}", self.program, args.join(" "), output.status, stderr.trim());
            return Err(DataplaneError::Tool { program: self.program, detail, retryable: true });
        }
        String::from_utf8(output.stdout).map_err(|_| DataplaneError::Observe(format!("`{}` printed output that is not UTF-8", self.program)))
    }
}

/// Whether a failure is the program saying the object does not exist (a table, a device, a route).
pub fn is_absent(err: &DataplaneError) -> bool {
    matches!(err, DataplaneError::Tool { detail, .. }
        if detail.contains("No such file or directory") || detail.contains("does not exist") || detail.contains("No such process"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_what_to_install() {
        let err = Tool { program: "switchyard-no-such-program", package: "some-package" }.run(&[], None).unwrap_err();
        assert_eq!(err.to_string(), "the `switchyard-no-such-program` program is not installed; install it with `apt-get install -y some-package`");
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_failure_carries_status_and_stderr() {
        let err = Tool { program: "sh", package: "dash" }.run(&["-c", "echo broken >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status: 3") && text.contains("broken"), "{text}");
    }

    #[test]
    fn stdin_reaches_the_program() {
        let out = Tool { program: "cat", package: "coreutils" }.run(&[], Some("hello")).unwrap();
        assert_eq!(out, "hello");
    }
}
