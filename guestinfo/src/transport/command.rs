//! The commands the host sends the guest, and their one set of wire names.

use std::fmt;

/// A command pushed by the host (the VCH port layer, or the harness) to the tether.
///
/// This is the one list of host commands. Each transport turns its wire form into one of
/// these (the QEMU channel's text with [`HostCommand::parse`], the toolbox's VIX
/// `StartProgram` with [`HostCommand::from_vix_program`], the `OS_Halt` power operation into
/// [`HostCommand::Halt`]), and the tether acts on each in one exhaustive `match`. Every
/// `match` on a command, the wire names and the list [`HostCommand::parse`] searches
/// included, is exhaustive: adding a command makes the compiler point at every place that
/// must learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// Re-read the config (the toolbox `reload` action; `SIGHUP` in the original).
    Reload,
    /// Signal the primary session's process (argument: signal name or number).
    Kill(String),
    /// Signal the primary session's process group.
    GroupKill(String),
    /// Stop the container and power off (`OS_Halt`).
    Halt,
}

/// The signal of a `kill` that names none, as in the original toolbox action.
const DEFAULT_SIGNAL: &str = "TERM";

impl HostCommand {
    /// The command's name on the wire: the verb of the QEMU channel's text and the program
    /// path of a VIX `StartProgram`.
    pub fn verb(&self) -> &'static str {
        match self {
            HostCommand::Reload => "reload",
            HostCommand::Kill(_) => "kill",
            HostCommand::GroupKill(_) => "group-kill",
            HostCommand::Halt => "halt",
        }
    }

    /// The signal a command carries.
    pub fn signal(&self) -> Option<&str> {
        match self {
            HostCommand::Kill(sig) | HostCommand::GroupKill(sig) => Some(sig),
            HostCommand::Reload | HostCommand::Halt => None,
        }
    }

    /// Whether the VIX `StartProgram` path offers the command, as the original toolbox did
    /// (a halt comes as the `OS_Halt` power operation instead).
    pub fn via_vix(&self) -> bool {
        match self {
            HostCommand::Reload | HostCommand::Kill(_) | HostCommand::GroupKill(_) => true,
            HostCommand::Halt => false,
        }
    }

    /// Every command, those that carry a signal with `signal`: what the parsers look names
    /// up in.
    pub fn all(signal: &str) -> Vec<HostCommand> {
        let mut all = vec![HostCommand::Reload];
        while let Some(next) = all.last().and_then(|c| c.next(signal)) {
            all.push(next);
        }
        all
    }

    /// The command after this one in [`HostCommand::all`]. A `match` rather than an array,
    /// so that a new command does not compile until it has its place in the list.
    fn next(&self, signal: &str) -> Option<HostCommand> {
        match self {
            HostCommand::Reload => Some(HostCommand::Kill(signal.to_owned())),
            HostCommand::Kill(_) => Some(HostCommand::GroupKill(signal.to_owned())),
            HostCommand::GroupKill(_) => Some(HostCommand::Halt),
            HostCommand::Halt => None,
        }
    }

    /// The command named `verb`, with `argument` as its signal when it carries one (an
    /// empty one means `TERM`).
    pub fn from_parts(verb: &str, argument: &str) -> Option<HostCommand> {
        let signal = match argument.trim_end_matches('\0').trim() {
            "" => DEFAULT_SIGNAL,
            sig => sig,
        };
        HostCommand::all(signal)
            .into_iter()
            .find(|c| c.verb() == verb)
    }

    /// Parses the text form (`reload`, `kill SIG`, `group-kill SIG`, `halt`), the QEMU
    /// channel's and [`fmt::Display`]'s.
    pub fn parse(text: &str) -> Option<HostCommand> {
        let text = text.trim_end_matches('\0').trim();
        let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
        HostCommand::from_parts(verb, argument)
    }

    /// The command a VIX `StartProgram` asks for: its program path names the command and its
    /// arguments are the signal; `None` for a program the toolbox does not run.
    pub fn from_vix_program(program_path: &str, arguments: &str) -> Option<HostCommand> {
        HostCommand::from_parts(program_path, arguments).filter(HostCommand::via_vix)
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())?;
        match self.signal() {
            Some(sig) => write!(f, " {sig}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(HostCommand::parse("reload"), Some(HostCommand::Reload));
        assert_eq!(HostCommand::parse("halt\0"), Some(HostCommand::Halt));
        assert_eq!(
            HostCommand::parse("kill KILL"),
            Some(HostCommand::Kill("KILL".to_owned()))
        );
        assert_eq!(
            HostCommand::parse("group-kill"),
            Some(HostCommand::GroupKill("TERM".to_owned()))
        );
        assert_eq!(HostCommand::parse("reboot"), None);
        assert_eq!(HostCommand::parse(""), None);
    }

    #[test]
    fn every_command_round_trips() {
        let all = HostCommand::all("HUP");
        assert_eq!(all.len(), 4);
        for c in all {
            assert_eq!(HostCommand::parse(&c.to_string()), Some(c.clone()));
            let vix = HostCommand::from_vix_program(c.verb(), c.signal().unwrap_or(""));
            assert_eq!(vix.is_some(), c.via_vix(), "{c}");
        }
        assert_eq!(HostCommand::Kill("9".to_owned()).to_string(), "kill 9");
        assert_eq!(HostCommand::Halt.to_string(), "halt");
    }

    #[test]
    fn vix_programs() {
        assert_eq!(
            HostCommand::from_vix_program("kill", ""),
            Some(HostCommand::Kill("TERM".to_owned()))
        );
        assert_eq!(
            HostCommand::from_vix_program("reload", "ignored"),
            Some(HostCommand::Reload)
        );
        assert_eq!(HostCommand::from_vix_program("halt", ""), None);
        assert_eq!(HostCommand::from_vix_program("/bin/sh", ""), None);
    }
}
