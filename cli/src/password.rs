//! Where passwords come from: `--password-stdin`, `RATHAUS_PASSWORD`, or an interactive
//! prompt (never a command-line argument, which other users could see in `ps`).

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};

/// Reads a password. `confirm` asks twice at an interactive prompt (for new passwords).
pub(crate) fn read(from_stdin: bool, confirm: bool) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let pw = line.trim_end_matches(['\r', '\n']).to_owned();
        if pw.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(pw);
    }
    if let Ok(pw) = std::env::var("RATHAUS_PASSWORD") {
        if !pw.is_empty() {
            return Ok(pw);
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no password given: use --password-stdin or set RATHAUS_PASSWORD");
    }
    let pw = rpassword::prompt_password("Password: ").context("cannot read the password")?;
    if confirm {
        let again =
            rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
        if again != pw {
            bail!("the passwords do not match");
        }
    }
    Ok(pw)
}
