//! A progress bar on stderr for long catch-ups (`sync`, `listen`, `read` after a long
//! time away), shown only on a terminal and never with `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use rathaus_client::{CatchUp, Client};

use crate::output::Output;

/// Has `client` draw a bar per group while it fetches a backlog of more than one page.
pub(crate) fn show_catch_up(client: &mut Client, out: &Output) {
    if out.json || !std::io::stderr().is_terminal() {
        return;
    }
    let mut current: Option<(String, ProgressBar)> = None;
    client.on_catch_up(move |step: &CatchUp| {
        if current
            .as_ref()
            .is_none_or(|(group, _)| *group != step.group)
        {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = ProgressBar::new(step.total);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} messages {eta}")
            {
                bar.set_style(style);
            }
            bar.set_message(format!("catching up on {}", step.group));
            current = Some((step.group.clone(), bar));
        }
        if let Some((_, bar)) = &current {
            bar.set_length(step.total.max(step.done));
            bar.set_position(step.done);
            if step.done >= step.total {
                bar.finish_and_clear();
            }
        }
    });
}
