//! The long-running use cases as jobs on a thread of their own (fine-tuning, generating,
//! importing, posting now), each reporting through one channel of [`AppEvent`]s: a face (the
//! TUI) applies the events to its state and never waits for a job. Each job works in a
//! [`Session::for_job`]: its own connection to the store.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

use crate::app::training::Init;
use crate::app::{
    self, GenerateRequest, Session, TrainData, TrainEvent, TrainOverrides, TrainRequest,
};

/// What a background job reports.
#[derive(Debug)]
pub enum AppEvent {
    /// Progress of the fine-tune.
    Train(TrainEvent),
    /// The fine-tune ended: how, or why it failed.
    TrainDone(Result<String, String>),
    /// A generation ended: how many candidates were kept.
    Generated(Result<usize, String>),
    /// An import ended: a summary.
    Imported(Result<String, String>),
    /// A post-now ended: what became of the entry.
    Posted(Result<String, String>),
}

fn words(e: crate::Error) -> String {
    e.to_string().replace("\nHINT: ", " — ").replace('\n', " ")
}

/// Fine-tunes bot `bot` (resuming with `restore`, starting over with `replace`).
pub fn train(
    session: Session,
    bot: String,
    restore: bool,
    cancel: Arc<AtomicBool>,
    tx: Sender<AppEvent>,
) {
    std::thread::spawn(move || {
        let (ttx, trx) = mpsc::channel();
        let fwd = tx.clone();
        let forward = std::thread::spawn(move || {
            for ev in trx {
                if fwd.send(AppEvent::Train(ev)).is_err() {
                    break;
                }
            }
        });
        let req = TrainRequest {
            data: TrainData::Bot {
                home: session.home().clone(),
                name: bot,
            },
            init: Init::Pretrained(None),
            checkpoint_dir: None,
            restore,
            replace: !restore,
            trial: false,
            overrides: TrainOverrides::default(),
            device: None,
        };
        // `app::train` applies [finetune] itself, as for `aviary finetune`.
        let result = app::train(session.config(), &req, &ttx, &cancel);
        drop(ttx);
        let _ = forward.join();
        let _ = tx.send(AppEvent::TrainDone(
            result
                .map(|o| {
                    format!(
                        "{:?} at step {}; best validation loss {}",
                        o.reason,
                        o.steps,
                        o.best_val_loss
                            .map(|b| format!("{b:.4}"))
                            .unwrap_or("-".into())
                    )
                })
                .map_err(words),
        ));
    });
}

/// Generates `n` candidates for bot `bot`.
pub fn generate(
    mut session: Session,
    bot: String,
    temperature: f64,
    prime: String,
    tx: Sender<AppEvent>,
) {
    std::thread::spawn(move || {
        let r = session.parts().and_then(|p| {
            let req = GenerateRequest {
                checkpoint: None,
                n: 10,
                temperature: Some(temperature),
                top_k: None,
                top_p: None,
                prime,
                seed: None,
            };
            app::candidates::generate_for_bot(p.config, p.store, &bot, &req)
        });
        let _ = tx.send(AppEvent::Generated(r.map(|b| b.kept.len()).map_err(words)));
    });
}

/// Imports a file, or fetches an @handle, into bot `bot`.
pub fn import(mut session: Session, bot: String, source: String, tx: Sender<AppEvent>) {
    std::thread::spawn(move || {
        let r = session.parts().and_then(|p| {
            if let Some(handle) = source.strip_prefix('@') {
                let f = app::fetch::fetch(&p.posting(false), p.store, &bot, handle, 3200)?;
                Ok(format!(
                    "fetched {} tweets of @{handle} into {bot}: {} kept",
                    f.fetched, f.report.kept
                ))
            } else {
                let report = app::bots::import(
                    p.store,
                    &app::ImportRequest {
                        bot: bot.clone(),
                        paths: vec![PathBuf::from(shellish(&source))],
                        format: None,
                    },
                )?;
                Ok(format!(
                    "imported {} into {bot}: {} tweets kept",
                    report.files_summary(),
                    report.kept
                ))
            }
        });
        let _ = tx.send(AppEvent::Imported(r.map_err(words)));
    });
}

/// A typed path with `~` expanded and quotes dropped.
fn shellish(s: &str) -> String {
    let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
    match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(h)) => PathBuf::from(h).join(rest).display().to_string(),
        _ => s.to_string(),
    }
}

/// Posts queue entry `id` now.
pub fn post_now(mut session: Session, id: i64, tx: Sender<AppEvent>) {
    std::thread::spawn(move || {
        let r = session.parts().and_then(|p| {
            let mut last = String::new();
            let e = app::posting::post_now(&p.posting(false), p.store, id, p.clock, &mut |ev| {
                last = ev.to_string()
            })?;
            Ok(format!("#{id} {}: {last}", e.status))
        });
        let _ = tx.send(AppEvent::Posted(r.map_err(words)));
    });
}
