//! `aviary bot ...` and `aviary import`: parse, call `app::bots`, print.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::app::bots::{self, ImportRequest};
use crate::app::session::{Parts, Session};
use crate::app::ImportFormat as Format;
use crate::{Error, Result};

/// `aviary bot`.
#[derive(Args, Debug)]
pub struct BotArgs {
    /// What to do with bots.
    #[command(subcommand)]
    pub command: BotCommand,
}

/// The bot subcommands.
#[derive(Subcommand, Debug)]
pub enum BotCommand {
    /// Create a bot (it takes the cleaning policy of config [clean]).
    New {
        /// Its name: letters, digits, - and _.
        name: String,
        /// The account's handle, e.g. @BarackObama (an archive import fills it in otherwise).
        #[arg(long)]
        handle: Option<String>,
    },
    /// List every bot with its tweets and model.
    List,
    /// Show a bot: tweets, cleaning policy, imports and training runs.
    Show {
        /// The bot.
        name: String,
    },
    /// Remove a bot with its tweets, runs, candidates, queue and checkpoints.
    Remove {
        /// The bot.
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Show a bot's cleaning policy, or change it with KEY=VALUE (re-cleans its tweets).
    Policy {
        /// The bot.
        name: String,
        /// Settings as in config [clean], e.g. drop_replies=true urls=placeholder min_chars=10.
        settings: Vec<String>,
        /// Go back to the policy of config [clean].
        #[arg(long, conflicts_with = "settings")]
        reset: bool,
    },
}

/// `aviary import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The bot to import into.
    pub bot: String,
    /// Files: an X archive (zip, folder or data/tweets.js), API JSON, CSV or text.
    #[arg(required_unless_present = "fetch")]
    pub files: Vec<PathBuf>,
    /// Fetch this account's newest tweets through the X API instead (needs `aviary auth BOT`;
    /// X serves the newest 3,200 at most).
    #[arg(long, value_name = "HANDLE", conflicts_with_all = ["files", "format"])]
    pub fetch: Option<String>,
    /// With --fetch: at most this many tweets.
    #[arg(long, default_value_t = 3200, requires = "fetch")]
    pub max: usize,
    /// Read every file as this format instead of detecting it: archive, api-v1, api-v2, csv, text.
    #[arg(long)]
    pub format: Option<String>,
}

/// Runs a bot subcommand.
pub fn bot(session: &mut Session, a: BotArgs) -> Result<()> {
    let Parts {
        home,
        config,
        store,
        ..
    } = session.parts()?;
    match a.command {
        BotCommand::New { name, handle } => {
            let bot = bots::new_bot(store, config, &name, handle.as_deref())?;
            let at = bot.handle.map(|h| format!(" (@{h})")).unwrap_or_default();
            println!("created bot {name}{at}; import its tweets with `aviary import {name} FILE`");
        }
        BotCommand::List => {
            let all = bots::list_bots(store)?;
            if all.is_empty() {
                println!("no bots yet; create one with `aviary bot new NAME`");
                return Ok(());
            }
            println!(
                "{:<20} {:<20} {:>7} {:>7}  model",
                "NAME", "HANDLE", "KEPT", "DROPPED"
            );
            for (b, c) in all {
                let handle = b
                    .handle
                    .map(|h| format!("@{h}"))
                    .unwrap_or_else(|| "-".into());
                let model = if b.active_checkpoint.is_some() {
                    "trained"
                } else {
                    "base"
                };
                println!(
                    "{:<20} {:<20} {:>7} {:>7}  {model}",
                    b.name,
                    handle,
                    c.kept,
                    c.total - c.kept
                );
            }
        }
        BotCommand::Show { name } => show(&bots::show_bot(store, &name)?),
        BotCommand::Remove { name, yes } => {
            let counts = bots::show_bot(store, &name)?.counts;
            let dir = home.bot_dir(&name);
            if !yes {
                let q = format!(
                    "remove bot {name} with its {} tweets, training runs, candidates, queue and {}? [y/N] ",
                    counts.total,
                    dir.display()
                );
                if !confirm(&q)? {
                    println!("kept {name}");
                    return Ok(());
                }
            }
            bots::remove_bot(home, store, &name)?;
            println!("removed bot {name}");
        }
        BotCommand::Policy {
            name,
            settings,
            reset,
        } => {
            let bot = bots::find_bot(store, &name)?;
            if settings.is_empty() && !reset {
                let policy = bots::policy_of(&bot)?;
                print!("{}", toml::to_string(&policy).expect("a policy serialises"));
                return Ok(());
            }
            let policy = if reset {
                config.clean.clone()
            } else {
                bots::apply_settings(&bots::policy_of(&bot)?, &settings)?
            };
            let report = bots::set_policy(store, &name, &policy)?;
            print!("{}", toml::to_string(&policy).expect("a policy serialises"));
            println!("re-cleaned the tweets of {name}:");
            print!("{}", report.render());
        }
    }
    Ok(())
}

/// Asks on the terminal; refuses to guess without one.
fn confirm(question: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::invalid(
            "cannot ask for confirmation: standard input is not a terminal",
            "pass --yes to remove without asking",
        ));
    }
    print!("{question}");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::invalid(format!("cannot read the answer: {e}"), "pass --yes"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn show(d: &bots::BotDetails) {
    let b = &d.bot;
    let handle = b
        .handle
        .as_ref()
        .map(|h| format!(" (@{h})"))
        .unwrap_or_default();
    println!("bot {}{handle}, created {}", b.name, b.created_at);
    println!(
        "model: {}",
        b.active_checkpoint
            .as_deref()
            .unwrap_or("the built-in base model (not trained yet)")
    );
    let dropped: Vec<String> = d
        .counts
        .dropped
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "tweets: {} stored, {} kept ({} characters), {} dropped{}",
        d.counts.total,
        d.counts.kept,
        d.counts.kept_chars,
        d.counts.total - d.counts.kept,
        if dropped.is_empty() {
            String::new()
        } else {
            format!(" ({})", dropped.join(", "))
        }
    );
    println!(
        "cleaning policy (change with `aviary bot policy {} KEY=VALUE`):",
        b.name
    );
    for line in toml::to_string(&d.policy)
        .expect("a policy serialises")
        .lines()
    {
        println!("  {line}");
    }
    if !d.imports.is_empty() {
        println!("imports:");
        for (at, r) in &d.imports {
            println!(
                "  {at}: {} read, {} kept, {} dropped, {} skipped from {}",
                r.read,
                r.kept,
                r.dropped_total(),
                r.already_imported,
                r.files_summary()
            );
        }
    }
    if !d.runs.is_empty() {
        println!("training runs:");
        for r in &d.runs {
            let best = r
                .best_val_loss
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into());
            println!(
                "  {}: {} {}, {} steps, best validation loss {best}, {}{}",
                r.started_at,
                r.kind,
                r.status,
                r.steps.unwrap_or(0),
                r.checkpoint_dir,
                r.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Runs `aviary import`.
pub fn import(session: &mut Session, a: ImportArgs) -> Result<()> {
    let format = a.format.as_deref().map(str::parse::<Format>).transpose()?;
    let p = session.parts()?;
    if let Some(handle) = &a.fetch {
        let f = crate::app::fetch::fetch(&p.posting(false), p.store, &a.bot, handle, a.max)?;
        println!(
            "fetched {} tweets of @{} into {} (pages kept in {})",
            f.fetched,
            handle.trim_start_matches('@'),
            a.bot,
            f.pages_file.display()
        );
        if f.at_timeline_limit {
            println!("  X serves only an account's newest 3,200 posts: for older ones, import its archive");
        } else if f.more_available {
            println!("  stopped at --max {}; more are available", a.max);
        }
        print!("{}", f.report.render());
        return Ok(());
    }
    let report = bots::import(
        p.store,
        &ImportRequest {
            bot: a.bot.clone(),
            paths: a.files,
            format,
        },
    )?;
    let formats: Vec<&str> = report
        .formats
        .iter()
        .filter_map(|f| f.parse::<Format>().ok())
        .map(Format::describe)
        .collect();
    println!(
        "imported into {} from {} ({})",
        a.bot,
        report.files_summary(),
        formats.join(", ")
    );
    if let Some(h) = &report.handle {
        println!("  account   @{h}");
    }
    print!("{}", report.render());
    Ok(())
}
