//! Every key the TUI answers, in one table: the dispatcher looks keys up here, and the help
//! overlay and the status bar's hints are generated from it, so they cannot disagree.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a key applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pane {
    /// The bots list.
    Bots,
    /// Fine-tuning the selected bot.
    Training,
    /// Candidates of the selected bot.
    Generation,
    /// The selected bot's posting queue.
    Queue,
}

impl Pane {
    /// In tab order.
    pub const ALL: [Pane; 4] = [Pane::Bots, Pane::Training, Pane::Generation, Pane::Queue];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Pane::Bots => "Bots",
            Pane::Training => "Training",
            Pane::Generation => "Generation",
            Pane::Queue => "Queue",
        }
    }
}

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Quit (asks first while training runs).
    Quit,
    /// Show or hide the help.
    Help,
    /// Next pane.
    NextPane,
    /// Previous pane.
    PrevPane,
    /// Go to pane.
    GoTo(Pane),
    /// Selection down.
    Down,
    /// Selection up.
    Up,
    /// Open the selected bot (its training pane).
    Open,
    /// New bot (name, then a file or @handle).
    NewBot,
    /// Import more tweets into the selected bot.
    Import,
    /// Delete the selected bot (asks first).
    DeleteBot,
    /// Start or resume fine-tuning.
    StartTraining,
    /// Stop fine-tuning (saved; resumable).
    StopTraining,
    /// Generate more candidates.
    Generate,
    /// Temperature up.
    Hotter,
    /// Temperature down.
    Colder,
    /// Set the priming text.
    Prime,
    /// Approve the selected candidate (queues it).
    Approve,
    /// Reject the selected candidate.
    Reject,
    /// Edit the selected candidate.
    Edit,
    /// Undo the last review.
    Undo,
    /// Move the selected queue entry up.
    MoveUp,
    /// Move the selected queue entry down.
    MoveDown,
    /// Remove the selected queue entry.
    Remove,
    /// Post the selected queue entry now.
    PostNow,
    /// Start the scheduler service, or stop it.
    ToggleScheduler,
}

/// One binding.
pub struct Binding {
    /// The pane it applies in (`None`: everywhere).
    pub pane: Option<Pane>,
    /// The key.
    pub code: KeyCode,
    /// Modifiers that must be held.
    pub mods: KeyModifiers,
    /// What it does.
    pub action: Action,
    /// The key as shown.
    pub label: &'static str,
    /// What it does, in words.
    pub help: &'static str,
    /// The CLI command that does the same (for actions that change data).
    pub cli: Option<&'static str>,
}

const fn key(
    pane: Option<Pane>,
    code: KeyCode,
    action: Action,
    label: &'static str,
    help: &'static str,
    cli: Option<&'static str>,
) -> Binding {
    Binding {
        pane,
        code,
        mods: KeyModifiers::NONE,
        action,
        label,
        help,
        cli,
    }
}

use Pane::*;

/// The keymap. Earlier entries win; pane-specific ones are listed before global ones.
pub const KEYMAP: &[Binding] = &[
    key(
        Some(Bots),
        KeyCode::Enter,
        Action::Open,
        "Enter",
        "open the bot's training pane",
        None,
    ),
    key(
        Some(Bots),
        KeyCode::Char('n'),
        Action::NewBot,
        "n",
        "new bot (name, then tweets)",
        Some("bot new NAME"),
    ),
    key(
        Some(Bots),
        KeyCode::Char('i'),
        Action::Import,
        "i",
        "import tweets (file, @handle)",
        Some("import NAME FILE"),
    ),
    key(
        Some(Bots),
        KeyCode::Char('t'),
        Action::StartTraining,
        "t",
        "fine-tune the bot (shows its training pane)",
        Some("finetune NAME"),
    ),
    key(
        Some(Bots),
        KeyCode::Char('d'),
        Action::DeleteBot,
        "d",
        "delete the bot (asks first)",
        Some("bot remove NAME --yes"),
    ),
    key(
        Some(Training),
        KeyCode::Char('t'),
        Action::StartTraining,
        "t",
        "start or resume fine-tuning",
        Some("finetune NAME"),
    ),
    key(
        Some(Training),
        KeyCode::Char('s'),
        Action::StopTraining,
        "s",
        "stop (saved, resumable)",
        None,
    ),
    key(
        Some(Generation),
        KeyCode::Char('g'),
        Action::Generate,
        "g",
        "generate more candidates",
        Some("generate --bot NAME"),
    ),
    key(
        Some(Generation),
        KeyCode::Char('+'),
        Action::Hotter,
        "+",
        "temperature up",
        None,
    ),
    key(
        Some(Generation),
        KeyCode::Char('-'),
        Action::Colder,
        "-",
        "temperature down",
        None,
    ),
    key(
        Some(Generation),
        KeyCode::Char('p'),
        Action::Prime,
        "p",
        "priming text",
        None,
    ),
    key(
        Some(Generation),
        KeyCode::Char('a'),
        Action::Approve,
        "a",
        "approve (queues it)",
        Some("candidates NAME --approve 1"),
    ),
    key(
        Some(Generation),
        KeyCode::Char('x'),
        Action::Reject,
        "x",
        "reject",
        Some("candidates NAME --reject 1"),
    ),
    key(
        Some(Generation),
        KeyCode::Char('e'),
        Action::Edit,
        "e",
        "edit the text (280 at most)",
        Some("candidates NAME --edit 1 TEXT"),
    ),
    key(
        Some(Generation),
        KeyCode::Char('u'),
        Action::Undo,
        "u",
        "undo the last review",
        Some("candidates NAME --reset 1"),
    ),
    key(
        Some(Queue),
        KeyCode::Char('K'),
        Action::MoveUp,
        "K",
        "move the entry up",
        Some("queue move 1 1"),
    ),
    key(
        Some(Queue),
        KeyCode::Char('J'),
        Action::MoveDown,
        "J",
        "move the entry down",
        Some("queue move 1 2"),
    ),
    key(
        Some(Queue),
        KeyCode::Char('r'),
        Action::Remove,
        "r",
        "remove the entry",
        Some("queue remove 1"),
    ),
    key(
        Some(Queue),
        KeyCode::Char('P'),
        Action::PostNow,
        "P",
        "post the entry now",
        Some("post-now 1"),
    ),
    key(
        Some(Queue),
        KeyCode::Char('S'),
        Action::ToggleScheduler,
        "S",
        "start or stop the scheduler (runs on when aviary quits)",
        Some("schedule start"),
    ),
    key(None, KeyCode::Char('j'), Action::Down, "j/↓", "down", None),
    key(None, KeyCode::Down, Action::Down, "↓", "down", None),
    key(None, KeyCode::Char('k'), Action::Up, "k/↑", "up", None),
    key(None, KeyCode::Up, Action::Up, "↑", "up", None),
    key(
        None,
        KeyCode::Tab,
        Action::NextPane,
        "Tab",
        "next pane",
        None,
    ),
    key(
        None,
        KeyCode::BackTab,
        Action::PrevPane,
        "S-Tab",
        "previous pane",
        None,
    ),
    key(
        None,
        KeyCode::Char('1'),
        Action::GoTo(Bots),
        "1",
        "bots",
        None,
    ),
    key(
        None,
        KeyCode::Char('2'),
        Action::GoTo(Training),
        "2",
        "training",
        None,
    ),
    key(
        None,
        KeyCode::Char('3'),
        Action::GoTo(Generation),
        "3",
        "generation",
        None,
    ),
    key(
        None,
        KeyCode::Char('4'),
        Action::GoTo(Queue),
        "4",
        "queue",
        None,
    ),
    key(None, KeyCode::Char('?'), Action::Help, "?", "help", None),
    key(None, KeyCode::Char('q'), Action::Quit, "q", "quit", None),
];

/// The action `k` means in `pane`.
pub fn lookup(pane: Pane, k: &KeyEvent) -> Option<Action> {
    // Shift is part of the character for letters and symbols.
    let mods = k.modifiers - KeyModifiers::SHIFT;
    if mods.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    KEYMAP
        .iter()
        .filter(|b| b.pane.is_none_or(|p| p == pane))
        .find(|b| b.code == k.code && b.mods == mods)
        .map(|b| b.action)
}

/// Help lines: (section, key, words), pane keys first, the common ones once.
pub fn help_lines() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for pane in Pane::ALL {
        for b in KEYMAP.iter().filter(|b| b.pane == Some(pane)) {
            out.push((pane.title(), b.label, b.help));
        }
    }
    // Arrow keys share a line with their letters.
    for b in KEYMAP
        .iter()
        .filter(|b| b.pane.is_none() && !matches!(b.code, KeyCode::Down | KeyCode::Up))
    {
        out.push(("Everywhere", b.label, b.help));
    }
    out
}

/// The status bar's hints for `pane`: its own keys, then help and quit.
pub fn hints(pane: Pane) -> String {
    let mut parts: Vec<String> = KEYMAP
        .iter()
        .filter(|b| b.pane == Some(pane))
        .map(|b| {
            format!(
                "{} {}",
                b.label,
                b.help.split([' ', '(']).next().unwrap_or("")
            )
        })
        .collect();
    parts.push("? help".into());
    parts.push("q quit".into());
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_per_pane() {
        let k = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        assert_eq!(lookup(Pane::Generation, &k('a')), Some(Action::Approve));
        assert_eq!(lookup(Pane::Bots, &k('a')), None);
        assert_eq!(lookup(Pane::Queue, &k('j')), Some(Action::Down));
        let shift_k = KeyEvent::new(KeyCode::Char('K'), KeyModifiers::SHIFT);
        assert_eq!(lookup(Pane::Queue, &shift_k), Some(Action::MoveUp));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(lookup(Pane::Bots, &ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn no_key_is_bound_twice_in_one_pane() {
        for pane in Pane::ALL {
            let mut seen = std::collections::HashSet::new();
            for b in KEYMAP.iter().filter(|b| b.pane.is_none_or(|p| p == pane)) {
                assert!(
                    seen.insert((b.code, b.mods)),
                    "{:?} twice in {pane:?}",
                    b.code
                );
            }
        }
    }

    #[test]
    fn help_lists_every_action() {
        let help = help_lines();
        for b in KEYMAP
            .iter()
            .filter(|b| !matches!(b.code, KeyCode::Down | KeyCode::Up))
        {
            assert!(
                help.iter().any(|(_, l, h)| *l == b.label && *h == b.help),
                "{}",
                b.label
            );
        }
    }

    #[test]
    fn every_action_that_changes_data_has_its_subcommand() {
        use clap::Parser;
        for b in KEYMAP.iter().filter_map(|b| b.cli.map(|c| (b, c))) {
            let args = std::iter::once("aviary").chain(b.1.split_whitespace());
            if let Err(e) = crate::cli::Cli::try_parse_from(args) {
                panic!("`aviary {}` (key {}) does not parse: {e}", b.1, b.0.label);
            }
        }
        // The changing actions are exactly the ones naming a subcommand.
        let changing = [
            Action::NewBot,
            Action::Import,
            Action::DeleteBot,
            Action::StartTraining,
            Action::Generate,
            Action::Approve,
            Action::Reject,
            Action::Edit,
            Action::Undo,
            Action::MoveUp,
            Action::MoveDown,
            Action::Remove,
            Action::PostNow,
        ];
        for a in changing {
            assert!(
                KEYMAP.iter().any(|b| b.action == a && b.cli.is_some()),
                "{a:?} has no subcommand"
            );
        }
    }
}
