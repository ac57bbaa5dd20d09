//! Where passwords come from: `--password-stdin`, `RATHAUS_PASSWORD`, or an interactive
//! prompt (never a command-line argument, which other users could see in `ps`).

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Reads a password. `confirm` asks twice at an interactive prompt (for new passwords).
/// Every copy made here is wiped when dropped.
pub(crate) fn read(from_stdin: bool, confirm: bool) -> Result<Zeroizing<String>> {
    if from_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let pw = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        if pw.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(pw);
    }
    if let Ok(pw) = std::env::var("RATHAUS_PASSWORD") {
        let pw = Zeroizing::new(pw);
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: use --password-stdin or set RATHAUS_PASSWORD");
    }
    let pw = Zeroizing::new(
        rpassword::prompt_password("Password: ").context("cannot read the password")?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat password: ").context("cannot read the password")?,
        );
        if again != pw {
            bail!("the passwords do not match");
        }
    }
    Ok(pw)
}

/// Reads the current and the new password for `rathaus password`: two lines on standard
/// input with `--password-stdin`, else `RATHAUS_PASSWORD` and `RATHAUS_NEW_PASSWORD`, else
/// prompts (the new one twice).
pub(crate) fn read_change(from_stdin: bool) -> Result<(Zeroizing<String>, Zeroizing<String>)> {
    if from_stdin {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let mut next = |what: &str| -> Result<Zeroizing<String>> {
            let line = Zeroizing::new(
                lines
                    .next()
                    .with_context(|| format!("no {what} on standard input"))?
                    .context("cannot read standard input")?,
            );
            let pw = Zeroizing::new(line.trim_end_matches('\r').to_owned());
            if pw.is_empty() {
                bail!("no {what} on standard input");
            }
            Ok(pw)
        };
        let old = next("current password (first line)")?;
        let new = next("new password (second line)")?;
        return Ok((old, new));
    }
    if let (Ok(old), Ok(new)) = (
        std::env::var("RATHAUS_PASSWORD"),
        std::env::var("RATHAUS_NEW_PASSWORD"),
    ) {
        let (old, new) = (Zeroizing::new(old), Zeroizing::new(new));
        if !old.is_empty() && !new.is_empty() {
            return Ok((old, new));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no passwords given: use --password-stdin (current and new password on two lines) \
             or set RATHAUS_PASSWORD and RATHAUS_NEW_PASSWORD"
        );
    }
    let prompt = |text: &str| -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(
            rpassword::prompt_password(text).context("cannot read the password")?,
        ))
    };
    let old = prompt("Current password: ")?;
    let new = prompt("New password: ")?;
    let again = prompt("Repeat new password: ")?;
    if again != new {
        bail!("the new passwords do not match");
    }
    Ok((old, new))
}
