//! A child process a test starts (an `exchange-node`, a `gridex serve`): its log goes to the test's
//! output, each line marked with the child's name (several children share the output), and its
//! stdout comes line by line on a channel, to wait for what it announces.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{channel, Receiver};

/// Follows `child`'s piped stderr and stdout (it must have been spawned with both piped): stderr is
/// copied to ours as `[name] line`; stdout's lines are sent on the returned channel until it closes.
pub fn follow_output(child: &mut Child, name: &str) -> Receiver<String> {
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    let prefix = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{prefix}] {line}");
        }
    });
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (sender, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
