//! The command-line face: one subcommand per use case in `app`, progress drawn with
//! indicatif. Holds no domain logic: it parses, calls `app`, and prints.

mod bots;
mod posting;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::training::Init;
use crate::app::{
    self, bench::BenchRequest, Config, GenerateRequest, Home, Session, StopReason, TrainData,
    TrainEvent, TrainOverrides, TrainRequest,
};
use crate::{Error, Result};

/// aviary: train character-level LSTM models on tweets and sample new ones.
#[derive(Parser, Debug)]
#[command(name = "aviary", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML); see config/aviary.toml for every key.
    #[arg(long, global = true, env = "AVIARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder for aviary's database and bots (default: the platform's data directory).
    #[arg(long, global = true, env = "AVIARY_HOME")]
    pub home: Option<PathBuf>,
    /// CPU threads for the numeric work (default: physical cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Log what happens (to stderr).
    #[arg(long, global = true)]
    pub debug: bool,
    /// What to do (none: open the terminal UI).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, show or remove bots, or change a bot's cleaning policy.
    Bot(bots::BotArgs),
    /// Import an account's tweets into a bot (X archive, API JSON, CSV or plain text).
    Import(bots::ImportArgs),
    /// Fine-tune a bot's model from the base model on its tweets, or continue with --restore.
    Finetune(FinetuneArgs),
    /// Compare a bot's model with the base model (and one trained from scratch) on its held-out tweets.
    Eval(EvalArgs),
    /// Train a model on a bot's tweets or on text files, or continue one with --restore.
    Train(TrainArgs),
    /// Train your own base model on any corpus (docs/base-model.md: the built-in one's recipe).
    Base(BaseArgs),
    /// Try random training settings within a time budget and rank them (trials.csv).
    Search(SearchArgs),
    /// List a bot's candidate tweets, or review them: approve, reject, edit.
    Candidates(CandidatesArgs),
    /// Sample candidate tweets from a checkpoint.
    Generate(GenerateArgs),
    /// Measure training and sampling speed (JSON lines, same shape as torch_charlstm.py).
    Bench(BenchArgs),
    /// Authorise a bot to post as an X account (PIN-based OAuth; tokens saved with mode 0600).
    Auth(posting::AuthArgs),
    /// The posting queue: list (with planned times and cost), add, remove, move, retry.
    Queue(posting::QueueArgs),
    /// Post one queue entry now, whatever the schedule says.
    PostNow(posting::PostNowArgs),
    /// Run the scheduler that posts the queues, or show or change a bot's schedule.
    Schedule(posting::ScheduleArgs),
}

/// `aviary train`: the reference tutorial's flag names.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("data").required(true).args(["corpus", "bot"])))]
pub struct TrainArgs {
    /// Corpus file(s), one tweet per line.
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Train on this bot's kept tweets (see `aviary import`).
    #[arg(long)]
    pub bot: Option<String>,
    /// Directory for model.safetensors, card.json and the resume state (default for --bot:
    /// HOME/bots/NAME/model).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Start from this checkpoint's weights and vocabulary (e.g. to train a base model on).
    #[arg(long, conflicts_with = "restore")]
    pub from: Option<PathBuf>,
    /// Passes over the corpus.
    #[arg(long)]
    pub num_epochs: Option<u64>,
    /// Characters per row.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// LSTM units per layer.
    #[arg(long)]
    pub rnn_size: Option<usize>,
    /// LSTM layers.
    #[arg(long)]
    pub num_layers: Option<usize>,
    /// Character embedding size.
    #[arg(long)]
    pub embedding_size: Option<usize>,
    /// RMSprop learning rate (also on --restore).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Gradient clipping norm.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// The flags every training command takes.
    #[command(flatten)]
    pub run: RunFlags,
}

/// `aviary finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The bot.
    pub bot: String,
    /// Start from this checkpoint directory instead of the base model.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Passes over the bot's tweets at most (default: config [finetune]).
    #[arg(long, alias = "num-epochs")]
    pub epochs: Option<u64>,
    /// Learning rate (default: config [finetune]; also on --restore).
    #[arg(long, alias = "learning-rate")]
    pub lr: Option<f64>,
    /// The flags every training command takes.
    #[command(flatten)]
    pub run: RunFlags,
}

/// Flags of `aviary train` and `aviary finetune` alike.
#[derive(Args, Debug)]
pub struct RunFlags {
    /// Continue the run saved in the checkpoint directory (same step, optimizer state and
    /// data order).
    #[arg(long)]
    pub restore: bool,
    /// Start over, deleting the checkpoint in the checkpoint directory.
    #[arg(long, conflicts_with = "restore")]
    pub replace: bool,
    /// Stop after this many steps in all.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many seconds of training in all.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Rows per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Dropout rate.
    #[arg(long)]
    pub drop_rate: Option<f32>,
    /// Validate every N steps (and at each epoch end).
    #[arg(long)]
    pub val_every: Option<u64>,
    /// Early stopping: validations without improvement before stopping (0: never).
    #[arg(long)]
    pub patience: Option<u32>,
    /// Seed of initial weights, shuffling and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or cuda:N (default: CUDA when built with it and a GPU is present).
    #[arg(long)]
    pub device: Option<String>,
}

impl RunFlags {
    /// The request these flags make, over `overrides` (the command's own flags).
    fn request(
        self,
        data: TrainData,
        init: Init,
        checkpoint_dir: Option<PathBuf>,
        overrides: TrainOverrides,
    ) -> TrainRequest {
        let overrides = TrainOverrides {
            batch_size: self.batch_size,
            drop_rate: self.drop_rate,
            max_steps: self.max_steps,
            max_seconds: self.max_seconds,
            val_every: self.val_every,
            patience: self.patience,
            seed: self.seed,
            ..overrides
        };
        if self.restore {
            for flag in overrides.ignored_on_resume() {
                eprintln!("note: {flag} is ignored with --restore: the checkpoint fixes it");
            }
        }
        TrainRequest {
            data,
            init,
            checkpoint_dir,
            restore: self.restore,
            replace: self.replace,
            trial: false,
            overrides,
            device: self.device,
        }
    }
}

/// `aviary eval`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["bot", "corpus"])))]
pub struct EvalArgs {
    /// The bot.
    pub bot: Option<String>,
    /// Instead of a bot: the held-out split of these files (one tweet per line)...
    #[arg(long, num_args = 1.., conflicts_with_all = ["bot", "scratch"])]
    pub corpus: Vec<PathBuf>,
    /// ... for these checkpoints, and the built-in base model.
    #[arg(long, num_args = 1.., requires = "corpus")]
    pub checkpoint: Vec<PathBuf>,
    /// With --corpus: which tweets are held out. `folded` (default) keeps near-copies of a
    /// tweet on one side; `text` is the split of runs made before that (the built-in base
    /// model's published figures use it).
    #[arg(long, value_enum, requires = "corpus")]
    pub split: Option<SplitArg>,
    /// Also train a model from scratch on the bot's tweets for as long as its fine-tuning took.
    #[arg(long)]
    pub scratch: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
}

/// How `eval --corpus` splits the files.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SplitArg {
    /// A hash of each tweet's text with case, punctuation and white space folded.
    Folded,
    /// A hash of each tweet's text as it is.
    Text,
}

/// `aviary candidates`.
#[derive(Args, Debug)]
pub struct CandidatesArgs {
    /// The bot.
    pub bot: String,
    /// Only candidates with this status: new, approved, rejected, edited.
    #[arg(long)]
    pub status: Option<String>,
    /// Approve these candidates (ids as listed).
    #[arg(long, num_args = 1.., conflicts_with_all = ["reject", "edit", "reset"])]
    pub approve: Vec<i64>,
    /// Reject these candidates.
    #[arg(long, num_args = 1.., conflicts_with_all = ["edit", "reset"])]
    pub reject: Vec<i64>,
    /// Replace candidate ID's text: --edit ID TEXT.
    #[arg(long, num_args = 2, value_names = ["ID", "TEXT"], conflicts_with = "reset")]
    pub edit: Vec<String>,
    /// Mark these candidates unreviewed again.
    #[arg(long, num_args = 1..)]
    pub reset: Vec<i64>,
}

/// `aviary search`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("data").required(true).args(["corpus", "bot"])))]
pub struct SearchArgs {
    /// Fine-tuning trials for this bot (learning rate, dropout, batch size).
    #[arg(long)]
    pub bot: Option<String>,
    /// Base-model trials on these files, one tweet per line (sizes too).
    #[arg(long, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Configurations to try.
    #[arg(long, default_value_t = 6)]
    pub trials: usize,
    /// Seconds of training for all trials together.
    #[arg(long, default_value_t = 1800.0)]
    pub budget: f64,
    /// Seed of the configurations drawn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for the trials and trials.csv (default for --bot: HOME/bots/NAME/search).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
}

/// `aviary base`.
#[derive(Args, Debug)]
pub struct BaseArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BaseCommand,
}

/// The base subcommands.
#[derive(Subcommand, Debug)]
pub enum BaseCommand {
    /// Train a base model on a general corpus (the flags of `aviary train`).
    Train(Box<TrainArgs>),
    /// Write the word list candidates are judged by (checkpoints/base/words.txt) from a corpus.
    Words(BaseWordsArgs),
}

/// `aviary base words`.
#[derive(Args, Debug)]
pub struct BaseWordsArgs {
    /// Corpus file(s), one tweet per line.
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Keep words seen at least this many times.
    #[arg(long, default_value_t = 3)]
    pub min_count: u64,
    /// Where to write the list.
    #[arg(long)]
    pub out: PathBuf,
}

/// `aviary generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Generate for this bot (its model, or the base model until it is fine-tuned): candidates
    /// that copy its tweets are dropped, the rest stored for review.
    #[arg(long)]
    pub bot: Option<String>,
    /// Checkpoint directory (written by `aviary train`); default: the built-in base model.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Number of candidates.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub n: usize,
    /// Sampling temperature (0: always the likeliest character).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the k likeliest characters only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the likeliest characters covering probability p.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Every candidate starts with this text.
    #[arg(long, default_value = "")]
    pub prime: String,
    /// Seed, for reproducible candidates.
    #[arg(long)]
    pub seed: Option<u64>,
    /// With --bot: also print how the candidates sampled and kept compare with the account's
    /// tweets (lengths, unfinished, known words, the model's likelihood).
    #[arg(long, requires = "bot")]
    pub report: bool,
}

/// `aviary bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Text to train on (any text file; the reference script reads the same).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Timed training steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Characters sampled per stream.
    #[arg(long, default_value_t = 280)]
    pub gen_chars: usize,
    /// LSTM units.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Train with bf16 products (as `[train] bf16 = true`; CPUs with AVX-512 BF16).
    #[arg(long)]
    pub bf16: bool,
}

/// Parses the command line and runs it.
/// Parses the command line and sets up what every face needs (threads, logging, the config):
/// `main` then hands the subcommand to [`run`], or opens the TUI when there is none.
pub fn setup() -> Result<(Cli, Config)> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle and rayon both read this; it must be set before either starts its pool.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    let filter = if cli.debug {
        "aviary=debug"
    } else {
        "aviary=warn"
    };
    let tui = cli.command.is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        // Log lines on stderr would tear the TUI's screen.
        .with_writer(move || -> Box<dyn std::io::Write> {
            if tui {
                Box::new(std::io::sink())
            } else {
                Box::new(std::io::stderr())
            }
        })
        .init();
    let config = Config::load(cli.config.as_deref())?;
    Ok((cli, config))
}

impl Cli {
    /// The session the command line names: its home (`--home`, `AVIARY_HOME` or the
    /// platform's data directory) and `config` (read from `--config`).
    pub fn session(&self, config: Config) -> Result<Session> {
        let home = Home::resolve(self.home.clone())?;
        Ok(Session::open(home, config, self.config.clone()))
    }
}

/// Runs subcommand `command` in `session`.
pub fn run(session: &mut Session, command: Command) -> Result<()> {
    match command {
        Command::Bot(a) => bots::bot(session, a),
        Command::Import(a) => bots::import(session, a),
        Command::Train(a) => train(session, a),
        Command::Base(BaseArgs {
            command: BaseCommand::Train(a),
        }) => train(session, *a),
        Command::Base(BaseArgs {
            command: BaseCommand::Words(a),
        }) => {
            let n = app::training::write_base_words(&a.corpus, a.min_count, &a.out)?;
            println!("{n} words written to {}", a.out.display());
            Ok(())
        }
        Command::Finetune(a) => finetune(session, a),
        Command::Eval(a) => eval(session, a),
        Command::Search(a) => search(session, a),
        Command::Candidates(a) => candidates(session, a),
        Command::Generate(a) => generate(session, a),
        Command::Bench(a) => bench(session.config(), a),
        Command::Auth(a) => posting::auth(session, a),
        Command::Queue(a) => posting::queue(session, a),
        Command::PostNow(a) => posting::post_now(session, a),
        Command::Schedule(a) => posting::schedule(session, a),
    }
}

fn train(session: &Session, a: TrainArgs) -> Result<()> {
    let overrides = TrainOverrides {
        seq_len: a.seq_len,
        rnn_size: a.rnn_size,
        num_layers: a.num_layers,
        embedding_size: a.embedding_size,
        learning_rate: a.learning_rate,
        clip_norm: a.clip_norm,
        num_epochs: a.num_epochs,
        ..TrainOverrides::default()
    };
    let data = match a.bot {
        Some(name) => TrainData::Bot {
            home: session.home().clone(),
            name,
        },
        None => TrainData::Files(a.corpus),
    };
    let init = match a.from {
        Some(dir) => Init::Pretrained(Some(dir)),
        None => Init::Scratch,
    };
    let req = a.run.request(data, init, a.checkpoint_dir, overrides);
    run_training(session.config(), req)
}

/// `aviary finetune`.
fn finetune(session: &Session, a: FinetuneArgs) -> Result<()> {
    let overrides = TrainOverrides {
        learning_rate: a.lr,
        num_epochs: a.epochs,
        ..TrainOverrides::default()
    };
    let data = TrainData::Bot {
        home: session.home().clone(),
        name: a.bot,
    };
    let req = a
        .run
        .request(data, Init::Pretrained(a.from), None, overrides);
    run_training(session.config(), req)
}

/// Runs a training request with progress drawn, Ctrl-C stopping it cleanly.
fn run_training(config: &Config, req: TrainRequest) -> Result<()> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving (Ctrl-C again to quit at once)...");
    })
    .map_err(|e| {
        Error::invalid(
            format!("cannot install the Ctrl-C handler: {e}"),
            "run without a TTY wrapper",
        )
    })?;

    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::scope(|s| {
        // The worker owns the sender: when it ends, the channel closes and drawing stops.
        let worker = s.spawn(move || app::train(config, &req, &tx, &cancel));
        draw_progress(rx);
        worker.join().expect("the training thread panicked")
    })?;
    let dir = outcome.checkpoint_dir.display();
    match outcome.reason {
        StopReason::Cancelled | StopReason::MaxSteps | StopReason::TimeLimit => {
            println!("saved to {dir}; continue with the same command and --restore")
        }
        StopReason::EarlyStopped => {
            println!("stopped early (validation loss no longer improving); best model in {dir}")
        }
        StopReason::Completed => println!("done; best model in {dir}"),
    }
    Ok(())
}

/// `aviary candidates`: review, then list.
fn candidates(session: &mut Session, a: CandidatesArgs) -> Result<()> {
    use app::candidates::{list, review, Review};
    let store = session.store()?;
    let action = if !a.approve.is_empty() {
        Some((a.approve.clone(), Review::Approve))
    } else if !a.reject.is_empty() {
        Some((a.reject.clone(), Review::Reject))
    } else if !a.reset.is_empty() {
        Some((a.reset.clone(), Review::Reset))
    } else if let [id, text] = a.edit.as_slice() {
        let id = id.parse().map_err(|_| {
            Error::invalid(
                format!("`{id}` is not a candidate id"),
                "use --edit ID TEXT",
            )
        })?;
        Some((vec![id], Review::Edit(text.clone())))
    } else {
        None
    };
    if let Some((ids, r)) = action {
        review(store, &a.bot, &ids, &r)?;
        let done = match r {
            Review::Approve => "approved",
            Review::Reject => "rejected",
            Review::Edit(_) => "edited",
            Review::Reset => "unreviewed",
        };
        eprintln!("{} candidate(s) of {} {done}", ids.len(), a.bot);
    }
    for c in list(store, &a.bot, a.status.as_deref())? {
        let text = c.edited_text.as_deref().unwrap_or(&c.text);
        let novelty = c.novelty.map_or("-".into(), |n| format!("{n:.2}"));
        let score = c.score.map_or("-".into(), |n| format!("{n:.2}"));
        println!("{}\t{}\t{score}\t{novelty}\t{text}", c.id, c.status);
    }
    Ok(())
}

/// `aviary search`: trials one after another, then the ranked table.
fn search(session: &Session, a: SearchArgs) -> Result<()> {
    let config = session.config();
    let (data, out) = match a.bot {
        Some(name) => {
            let home = session.home().clone();
            let out = a.out.unwrap_or_else(|| home.bot_dir(&name).join("search"));
            (TrainData::Bot { home, name }, out)
        }
        None => {
            let out = a.out.ok_or_else(|| {
                Error::invalid("no folder for the trials", "pass --out DIR with --corpus")
            })?;
            (TrainData::Files(a.corpus), out)
        }
    };
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let req = app::hyper_search::SearchRequest {
        data,
        trials: a.trials,
        budget_seconds: a.budget,
        seed: a.seed,
        out_dir: out.clone(),
        device: a.device,
    };
    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let trials = std::thread::scope(|s| {
        let worker = s.spawn(move || {
            app::hyper_search::search(config, &req, &tx, &cancel, |t| {
                eprintln!(
                    "trial {}: lr {:.2e}, dropout {:.2}, batch {} -> val {}",
                    t.trial,
                    t.learning_rate,
                    t.drop_rate,
                    t.batch_size,
                    t.val_loss.map_or("-".into(), |v| format!("{v:.4}"))
                )
            })
        });
        draw_progress(rx);
        worker.join().expect("the search thread panicked")
    })?;
    println!(
        "{:>4} {:>5} {:>9} {:>7} {:>5} {:>5} {:>9} {:>6} {:>9}",
        "rank", "trial", "lr", "dropout", "batch", "units", "val loss", "steps", "s/epoch"
    );
    for (rank, t) in trials.iter().enumerate() {
        println!(
            "{:>4} {:>5} {:>9.2e} {:>7.2} {:>5} {:>5} {:>9} {:>6} {:>9.1}",
            rank + 1,
            t.trial,
            t.learning_rate,
            t.drop_rate,
            t.batch_size,
            t.rnn_size.map_or("base".into(), |u| u.to_string()),
            t.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            t.steps,
            t.seconds_per_epoch
        );
    }
    println!("written to {}", out.join("trials.csv").display());
    Ok(())
}

/// `aviary eval`: the table of held-out losses.
fn eval(session: &Session, a: EvalArgs) -> Result<()> {
    let config = session.config();
    let Some(bot) = a.bot else {
        let split = a.split.map(|s| match s {
            SplitArg::Folded => app::SplitRule::Folded,
            SplitArg::Text => app::SplitRule::Text,
        });
        let rows = app::training::eval_corpus(
            config,
            &a.corpus,
            &a.checkpoint,
            split,
            a.device.as_deref(),
        )?;
        return print_eval(&rows);
    };
    let home = session.home();
    let cancel = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let rows = std::thread::scope(|s| {
        let worker = s.spawn(move || {
            app::eval(
                config,
                home,
                &bot,
                a.scratch,
                a.device.as_deref(),
                &tx,
                &cancel,
            )
        });
        draw_progress(rx);
        worker.join().expect("the evaluation thread panicked")
    })?;
    print_eval(&rows)
}

/// The table of `aviary eval`.
fn print_eval(rows: &[app::EvalRow]) -> Result<()> {
    println!(
        "{:<14} {:>10} {:>9} {:>6} {:>10} {:>9}  checkpoint",
        "model", "per window", "per tweet", "vocab", "chars", "trained"
    );
    for r in rows {
        println!(
            "{:<14} {:>10.4} {:>9.4} {:>6} {:>10} {:>8.0}s  {}",
            r.model, r.val_loss, r.per_tweet, r.vocab, r.chars, r.train_seconds, r.checkpoint
        );
    }
    eprintln!(
        "(nats/char on held-out tweets: per window = {}-character windows read from a zero state; \
         per tweet = each tweet read from its start, as generation runs)",
        rows.first().map_or(0, |r| r.window)
    );
    Ok(())
}

/// Draws training events until the trainer hangs up.
fn draw_progress(rx: mpsc::Receiver<TrainEvent>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut val = String::from("val -");
    // Without a terminal the bar is hidden, and so is its println: say it plainly instead.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    for ev in rx {
        match ev {
            TrainEvent::Started {
                steps_per_epoch,
                total_steps,
                start_step,
                train_chars,
                val_chars,
                vocab_size,
                params,
                device,
                unknown_chars,
                unknown_distinct,
            } => {
                if unknown_chars > 0 {
                    say(format!(
                        "{unknown_chars} characters of the tweets ({unknown_distinct} distinct) are not in the model's vocabulary and are read as unknown"
                    ));
                }
                say(format!(
                    "training on {device}: {train_chars} chars ({val_chars} held out), vocab {vocab_size}, {params} parameters, {steps_per_epoch} steps/epoch{}",
                    if start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
                ));
                bar.set_length(total_steps);
                bar.set_position(start_step);
            }
            TrainEvent::Step {
                step,
                epoch,
                loss,
                chars_per_s,
                eta_s,
                ..
            } => {
                bar.set_position(step);
                bar.set_message(format!(
                    "epoch {}  loss {loss:.3}  {val}  {:.0} chars/s  ETA {}",
                    epoch + 1,
                    chars_per_s,
                    fmt_secs(eta_s)
                ));
            }
            TrainEvent::Validated {
                step,
                val_loss,
                best_val_loss,
                improved,
            } => {
                val = format!("val {val_loss:.3}");
                say(format!(
                    "step {step}: validation loss {val_loss:.4} nats/char (best {best_val_loss:.4}){}",
                    if improved { ", saved" } else { "" }
                ));
            }
            TrainEvent::Finished {
                reason,
                step,
                best_val_loss,
            } => {
                bar.finish_and_clear();
                let best = best_val_loss
                    .map(|b| format!("{b:.4}"))
                    .unwrap_or("-".into());
                println!(
                    "finished at step {step} ({reason:?}); best validation loss {best} nats/char"
                );
            }
        }
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn generate(session: &mut Session, a: GenerateArgs) -> Result<()> {
    let req = GenerateRequest {
        checkpoint: a.checkpoint,
        n: a.n,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        prime: a.prime,
        seed: a.seed,
    };
    let Some(bot) = a.bot else {
        let (texts, seed) = app::generate(session.config(), &req)?;
        for t in texts {
            println!("{t}");
        }
        tracing::info!("seed {seed}");
        return Ok(());
    };
    let p = session.parts()?;
    let started = std::time::Instant::now();
    let batch = app::candidates::generate_for_bot(p.config, p.store, &bot, &req)?;
    let dropped: Vec<String> = batch
        .rejected
        .iter()
        .map(|(r, n)| format!("{} {n}", r.name()))
        .collect();
    eprintln!(
        "{} new candidates for {bot} from {} in {:.2} s (sampled {}, dropped {}; seed {})",
        batch.kept.len(),
        batch.checkpoint,
        started.elapsed().as_secs_f64(),
        batch.sampled,
        if dropped.is_empty() {
            "none".to_string()
        } else {
            dropped.join(", ")
        },
        batch.seed
    );
    for c in &batch.kept {
        println!(
            "{}\t{:.2}\t{:.2}\t{}",
            c.id, c.quality.score, c.novelty, c.text
        );
    }
    if batch.kept.len() < req.n {
        eprintln!(
            "note: fewer than {} passed the checks; try a higher --temperature",
            req.n
        );
    }
    if a.report {
        print_report(&batch.report);
    }
    Ok(())
}

/// The table of `generate --report`.
fn print_report(r: &app::QualityReport) {
    println!(
        "\n{:<10} {:>6} {:>11} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "", "count", "length p10", "median", "p90", "unfinished", "words known", "nats/char"
    );
    let l = &r.account;
    println!(
        "{:<10} {:>6} {:>11} {:>10} {:>9}",
        "account", l.count, l.p10, l.median, l.p90
    );
    for (name, g) in [("sampled", &r.sampled), ("kept", &r.kept)] {
        let l = &g.lengths;
        println!(
            "{:<10} {:>6} {:>11} {:>10} {:>9} {:>9.1}% {:>9.1}% {:>10.3}",
            name,
            l.count,
            l.p10,
            l.median,
            l.p90,
            100.0 * g.unfinished,
            100.0 * g.words_known,
            g.nats_per_char
        );
    }
    println!(
        "words known: {:.1}% of the sampled ones are the account's, {:.1}% the base corpus's; \
         kept: {:.1}% and {:.1}%",
        100.0 * r.sampled.words_in_account,
        100.0 * r.sampled.words_in_base,
        100.0 * r.kept.words_in_account,
        100.0 * r.kept.words_in_base
    );
}

fn bench(config: &Config, a: BenchArgs) -> Result<()> {
    let req = BenchRequest {
        steps: a.steps,
        gen_chars: a.gen_chars,
        hidden: a.hidden,
        device: a.device,
        tf32: config.train.tf32,
        bf16: a.bf16 || config.train.bf16,
        ..BenchRequest::default()
    };
    app::bench::run(&a.corpus, &req, |v| println!("{v}"))
}
