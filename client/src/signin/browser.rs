//! Opening the sign-in URL in the person's browser: `$BROWSER` when set, else the desktop's
//! opener (`xdg-open` on Linux and the BSDs, `open` on macOS). Best effort: the URL is always
//! printed too, so a failure here only means the person clicks or copies it.

use std::process::{Command, Stdio};

/// The command that opens `url`: program and arguments. `browser_env` is `$BROWSER`; like
/// other tools, a `%s` in it stands for the URL, else the URL is appended, and of a
/// `:`-separated list the first entry is used.
pub fn opener(browser_env: Option<&str>, url: &str) -> Option<Vec<String>> {
    if let Some(first) = browser_env
        .and_then(|b| b.split(':').next())
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        let mut words: Vec<String> = first.split_whitespace().map(str::to_string).collect();
        if words.iter().any(|w| w.contains("%s")) {
            for w in &mut words {
                *w = w.replace("%s", url);
            }
        } else {
            words.push(url.to_string());
        }
        return Some(words);
    }
    let program = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(unix) {
        "xdg-open"
    } else {
        return None;
    };
    Some(vec![program.to_string(), url.to_string()])
}

/// Starts the opener detached from the terminal (no stdin/stdout/stderr) and does not wait
/// for it; a thread reaps it. Returns whether it could be started.
pub fn open(url: &str) -> bool {
    let env = std::env::var("BROWSER").ok();
    let Some(words) = opener(env.as_deref(), url) else {
        return false;
    };
    let spawned = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://gw.example.com/login?a=1&b=2";

    #[test]
    fn browser_variable_forms() {
        assert_eq!(opener(Some("firefox"), URL).unwrap(), vec!["firefox", URL]);
        assert_eq!(
            opener(Some("chromium --new-window:firefox"), URL).unwrap(),
            vec!["chromium", "--new-window", URL]
        );
        assert_eq!(
            opener(Some("lynx %s -accept_all_cookies"), URL).unwrap(),
            vec!["lynx", URL, "-accept_all_cookies"]
        );
    }

    #[test]
    fn without_browser_the_desktop_opener() {
        let words = opener(None, URL).unwrap();
        assert_eq!(words[1], URL);
        assert!(words[0] == "xdg-open" || words[0] == "open");
        assert_eq!(opener(Some("  "), URL).unwrap()[0], words[0]);
    }
}
