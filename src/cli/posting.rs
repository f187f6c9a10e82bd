//! `aviary auth`, `aviary queue ...`, `aviary post-now`, `aviary schedule ...`: parsing and
//! printing around `app::posting`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};

use crate::app::posting::{self, PostEvent, RunOptions};
use crate::app::Session;
use crate::{Error, Result};

/// `aviary auth`.
#[derive(Args, Debug)]
pub struct AuthArgs {
    /// The bot whose X account to authorise.
    pub bot: String,
}

/// `aviary queue`.
#[derive(Args, Debug)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue subcommands.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Every bot's queue (or one bot's) with planned times, mode and estimated cost.
    List {
        /// Only this bot.
        bot: Option<String>,
    },
    /// Queue a tweet written by hand (approving a candidate queues it too).
    Add {
        /// The bot.
        bot: String,
        /// The tweet.
        text: String,
    },
    /// Take a queued or failed entry out.
    Remove {
        /// The entry's id (see `queue list`).
        id: i64,
    },
    /// Put a queued entry at another place (1 = next to post).
    Move {
        /// The entry's id.
        id: i64,
        /// Its new place.
        to: usize,
    },
    /// Put a failed entry back at the end of its queue.
    Retry {
        /// The entry's id.
        id: i64,
    },
}

/// `aviary post-now`.
#[derive(Args, Debug)]
pub struct PostNowArgs {
    /// The queue entry's id (see `aviary queue list`).
    pub id: i64,
    /// Write to the outbox file instead of posting, even with credentials.
    #[arg(long)]
    pub dry_run: bool,
}

/// `aviary schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

/// The schedule subcommands.
#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Post every bot's queue in its slots until Ctrl-C or SIGTERM, logging each action.
    Run {
        /// Only this bot (repeatable).
        #[arg(long = "bot")]
        bots: Vec<String>,
        /// Write to the outbox file (HOME/outbox.jsonl) instead of posting, even with credentials.
        #[arg(long)]
        dry_run: bool,
        /// Handle what is due now, then exit (for cron).
        #[arg(long)]
        once: bool,
        /// Log to this file (moved to FILE.1 past 1 MiB) instead of standard output.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Run the scheduler in the background for this home, surviving the terminal (its log:
    /// HOME/scheduler.log).
    Start,
    /// Stop the background scheduler between two steps, and wait for it.
    Stop,
    /// Whether the scheduler runs, since when, its last log lines and each bot's next post.
    Status,
    /// Write a systemd user unit that starts the scheduler at login (Linux).
    Install,
    /// Remove the systemd user unit.
    Uninstall,
    /// A bot's schedule and one day's planned slots.
    Show {
        /// The bot.
        bot: String,
        /// The day (YYYY-MM-DD, in the bot's time zone; default today).
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Change a bot's schedule: slots=09:00,18:00 every=4h jitter=20m daily_cap=3
    /// quiet=23:00-07:00 timezone=Europe/Berlin enabled=true|false.
    Set {
        /// The bot.
        bot: String,
        /// key=value pairs.
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

/// Prints one scheduler event with the time, flushed at once (a log read live).
fn log(e: PostEvent) {
    print_line(&format!("{} {e}", posting::stamp(Utc::now())));
}

/// Prints a line and flushes it.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the scheduler; SIGPIPE ends the process if it is a pipe.
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// `schedule status`: running or not, since when, each bot's next post, the log's end.
fn print_status(session: &mut Session, s: &crate::app::service::ServiceStatus) -> Result<()> {
    if let Some(pid) = s.stale {
        println!("(process {pid} ended without stopping, killed or at a reboot: its pid file is removed)");
    }
    match (s.running, s.pid) {
        (true, Some((pid, since))) => println!(
            "scheduler running as process {pid} since {}",
            posting::stamp(since)
        ),
        (true, None) => println!("scheduler running in a terminal (`aviary schedule run`)"),
        (false, _) => println!("scheduler not running: start it with `aviary schedule start`"),
    }
    for (bot, _) in session.overview()? {
        let next = bot
            .next_post
            .map(posting::stamp)
            .unwrap_or_else(|| "-".to_string());
        println!("  {}: {} queued, next post {next}", bot.name, bot.queued);
    }
    if !s.log_tail.is_empty() {
        println!(
            "log ({}):",
            crate::app::service::log_path(session.home()).display()
        );
        for l in &s.log_tail {
            println!("  {l}");
        }
    }
    Ok(())
}

/// Runs `aviary auth`.
pub fn auth(session: &Session, a: AuthArgs) -> Result<()> {
    let done = posting::authorize(session.home(), session.config(), &a.bot, |url| {
        println!("1. Sign in to X as the account bot `{}` posts as.", a.bot);
        println!("2. Open this page and authorise the app:\n   {url}");
        print!("3. Type the PIN X shows: ");
        std::io::stdout()
            .flush()
            .map_err(|e| Error::io("<stdout>", e))?;
        let mut pin = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut pin)
            .map_err(|e| Error::io("<stdin>", e))?;
        Ok(pin)
    })?;
    println!(
        "\nbot `{}` posts as @{}; tokens saved to {} (mode 0600)",
        a.bot,
        done.username.as_deref().unwrap_or("?"),
        done.path.display()
    );
    println!("X asks automated accounts to carry the \"Automated\" label: set it in the account's settings.");
    Ok(())
}

/// Runs `aviary queue ...`.
pub fn queue(session: &mut Session, a: QueueArgs) -> Result<()> {
    let p = session.parts()?;
    match a.command {
        QueueCommand::List { bot } => {
            let all = posting::summary(&p.posting(false), p.store, bot.as_deref(), p.clock)?;
            if all.is_empty() {
                println!("no bots yet; create one with `aviary bot new NAME`");
            }
            let (mut day, mut n) = (0.0, 0);
            for q in &all {
                print_summary(q);
                day += q.cost_per_day;
                n += q.posts_per_day * q.enabled as usize;
            }
            if all.len() > 1 {
                println!(
                    "all bots: {n} posts a day, about ${day:.2} a day, ${:.2} a month",
                    day * 30.0
                );
            }
        }
        QueueCommand::Add { bot, text } => {
            let id = posting::queue_text(p.store, &bot, &text)?;
            println!("queued #{id} for {bot}");
        }
        QueueCommand::Remove { id } => {
            let e = posting::remove(p.store, id)?;
            println!("removed #{id} from {}'s queue", e.bot);
        }
        QueueCommand::Move { id, to } => {
            posting::move_to(p.store, id, to)?;
            println!("moved #{id} to place {to}");
        }
        QueueCommand::Retry { id } => {
            posting::retry(p.store, id)?;
            println!("#{id} is queued again");
        }
    }
    Ok(())
}

fn print_summary(q: &posting::QueueSummary) {
    let state = if q.enabled { "on" } else { "off" };
    println!(
        "{}: schedule {state}, {}; {} posts a day, about ${:.2} a day, ${:.2} a month",
        q.bot,
        q.mode,
        q.posts_per_day,
        q.cost_per_day,
        q.cost_per_day * 30.0
    );
    if q.entries.is_empty() {
        println!(
            "  (empty: approve candidates with `aviary candidates {} --approve ID`)",
            q.bot
        );
    }
    let mut planned = q.planned.iter();
    for e in &q.entries {
        let when = match e.status {
            crate::app::QueueStatus::Queued => planned
                .next()
                .map(|t| posting::stamp(*t))
                .unwrap_or_else(|| "-".into()),
            crate::app::QueueStatus::Posted => e.posted_at.clone().unwrap_or_default(),
            _ => e.sending_since.clone().unwrap_or_default(),
        };
        let extra = match (&e.posted_tweet_id, &e.error) {
            (Some(t), _) => format!(" id {t}"),
            (None, Some(err)) => format!(" ({err})"),
            _ => String::new(),
        };
        let text: String = e.text.chars().take(60).collect();
        let more = if e.text.chars().count() > 60 {
            "…"
        } else {
            ""
        };
        println!(
            "  #{:<5} {:<8} {:<20} {text}{more}{extra}",
            e.id, e.status, when
        );
    }
}

/// A stop flag set by Ctrl-C and SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .map_err(|e| Error::invalid(format!("cannot catch Ctrl-C: {e}"), "please report it"))?;
    Ok(stop)
}

/// Runs `aviary post-now`.
pub fn post_now(session: &mut Session, a: PostNowArgs) -> Result<()> {
    let p = session.parts()?;
    let e = posting::post_now(&p.posting(a.dry_run), p.store, a.id, p.clock, &mut log)?;
    println!("#{}: {}", e.id, e.status);
    match e.status {
        crate::app::QueueStatus::Posted | crate::app::QueueStatus::Sending => Ok(()),
        _ => Err(Error::invalid(
            format!(
                "#{} was not posted: {}",
                e.id,
                e.error.as_deref().unwrap_or("see above")
            ),
            "see `aviary queue list`",
        )),
    }
}

/// Runs `aviary schedule ...`; `config_path` is the `--config` given, for the service.
pub fn schedule(session: &mut Session, a: ScheduleArgs) -> Result<()> {
    use crate::app::service;
    let home = &session.home().clone();
    let config_path = session.config_path().map(Path::to_path_buf);
    let config_path = config_path.as_deref();
    match a.command {
        ScheduleCommand::Run {
            bots,
            dry_run,
            once,
            log: log_file,
        } => {
            let p = session.parts()?;
            let setup = p.posting(dry_run);
            let stop = stop_flag()?;
            let opts = RunOptions { bots, once };
            let mut file = log_file
                .as_deref()
                .map(service::RotatingLog::open)
                .transpose()?;
            let mut say = |line: String| match &mut file {
                // A log that cannot be written must not stop the posting; stderr says so.
                Some(f) => {
                    if let Err(e) = f.line(&line) {
                        eprintln!("{line}\n(log: {e})");
                    }
                }
                None => print_line(&line),
            };
            let mut on = |e: PostEvent| say(format!("{} {e}", posting::stamp(Utc::now())));
            let result = posting::run_scheduler(&setup, p.store, &opts, p.clock, &stop, &mut on);
            if let Err(e) = &result {
                say(format!("{} stopped: {e}", posting::stamp(Utc::now())));
            }
            result?;
            if stop.load(Ordering::Relaxed) {
                say(format!(
                    "{} stopped; nothing is left half-sent",
                    posting::stamp(Utc::now())
                ));
            }
        }
        ScheduleCommand::Start => {
            let launch = service::Launch::current(config_path, home)?;
            let s = service::start(home, &launch)?;
            let (pid, _) = s.pid.expect("a started service has its pid");
            println!(
                "scheduler started (process {pid}); log: {}",
                service::log_path(home).display()
            );
            print_status(session, &s)?;
        }
        ScheduleCommand::Stop => {
            service::stop(home, std::time::Duration::from_secs(120))?;
            println!("scheduler stopped; nothing is left half-sent");
        }
        ScheduleCommand::Status => {
            let s = service::status(home, 10)?;
            print_status(session, &s)?;
        }
        ScheduleCommand::Install => {
            let launch = service::Launch::current(config_path, home)?;
            let path = service::install(&launch, home)?;
            println!("wrote {}", path.display());
            println!("enable and start it:  systemctl --user daemon-reload && systemctl --user enable --now {}", service::UNIT_NAME);
            println!("to run it while you are logged out (a server): loginctl enable-linger $USER");
            println!(
                "see it:  systemctl --user status {}; aviary schedule status",
                service::UNIT_NAME
            );
        }
        ScheduleCommand::Uninstall => match service::uninstall()? {
            Some(path) => {
                println!("removed {}", path.display());
                println!(
                    "stop it if it runs:  systemctl --user disable --now {}",
                    service::UNIT_NAME
                );
            }
            None => println!("no unit was installed"),
        },
        ScheduleCommand::Show { bot, date } => {
            let p = session.parts()?;
            let (s, slots, tz) = posting::day_plan(p.config, p.store, &bot, date, p.clock)?;
            println!(
                "{bot}: schedule {}; slots {}{}, jitter {}, daily cap {}, quiet {}, time zone {}",
                if s.enabled { "on" } else { "off" },
                if s.slots.is_empty() {
                    "-".into()
                } else {
                    s.slots.join(",")
                },
                if s.every.is_empty() {
                    String::new()
                } else {
                    format!(", every {}", s.every)
                },
                s.jitter,
                if s.daily_cap == 0 {
                    "none".into()
                } else {
                    s.daily_cap.to_string()
                },
                if s.quiet.is_empty() { "none" } else { &s.quiet },
                s.timezone
            );
            for t in slots {
                println!(
                    "  {}  ({})",
                    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S"),
                    posting::stamp(t)
                );
            }
        }
        ScheduleCommand::Set { bot, settings } => {
            let p = session.parts()?;
            posting::set_schedule(p.config, p.store, &bot, &settings)?;
            println!("schedule of {bot} changed; see it with `aviary schedule show {bot}`");
        }
    }
    Ok(())
}
