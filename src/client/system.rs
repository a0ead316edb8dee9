//! The properties describing the sending machine, computed once when the client is built.

use crate::event::SystemProperties;

/// The environment variable posthog-python reads the release id from.
pub(crate) const RELEASE_ID_ENV: &str = "POSTHOG_RELEASE_ID";

/// The system properties for a client: `$os` and `$os_version` of this machine, and the
/// release id and app version given (the release id falling back to `POSTHOG_RELEASE_ID`).
/// Blank values count as unset.
pub(crate) fn system_properties(
    is_server: bool,
    release_id: Option<String>,
    app_version: Option<String>,
) -> SystemProperties {
    with_release_env(
        is_server,
        release_id,
        app_version,
        std::env::var(RELEASE_ID_ENV).ok(),
    )
}

/// [`system_properties`] with the value of `POSTHOG_RELEASE_ID` given.
fn with_release_env(
    is_server: bool,
    release_id: Option<String>,
    app_version: Option<String>,
    release_env: Option<String>,
) -> SystemProperties {
    let release_id = release_id
        .and_then(non_blank)
        .or_else(|| release_env.and_then(non_blank));
    SystemProperties {
        is_server,
        os: Some(os_name(std::env::consts::OS).to_owned()),
        os_version: os_version(),
        release_id,
        app_version: app_version.and_then(non_blank),
    }
}

/// `value` trimmed, or `None` when nothing is left.
fn non_blank(value: String) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The operating system's name as posthog-python (and posthog-js) spell it.
fn os_name(os: &str) -> &str {
    match os {
        "linux" => "Linux",
        "macos" => "Mac OS X",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        "ios" => "iOS",
        "android" => "Android",
        other => other,
    }
}

/// The operating system's version, when the standard library can read it: the kernel
/// release on Linux and Android, the product version on macOS. `None` elsewhere.
fn os_version() -> Option<String> {
    let text = if cfg!(any(target_os = "linux", target_os = "android")) {
        std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?
    } else if cfg!(target_os = "macos") {
        let plist =
            std::fs::read_to_string("/System/Library/CoreServices/SystemVersion.plist").ok()?;
        plist_string(&plist, "ProductVersion")?.to_owned()
    } else {
        return None;
    };
    non_blank(text)
}

/// The string after `<key>{key}</key>` in a property list.
fn plist_string<'a>(plist: &'a str, key: &str) -> Option<&'a str> {
    let after_key = &plist[plist.find(&format!("<key>{key}</key>"))?..];
    let start = after_key.find("<string>")? + "<string>".len();
    let end = after_key[start..].find("</string>")?;
    Some(&after_key[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_names_follow_posthog_python() {
        assert_eq!(os_name("linux"), "Linux");
        assert_eq!(os_name("macos"), "Mac OS X");
        assert_eq!(os_name("windows"), "Windows");
        assert_eq!(os_name("freebsd"), "FreeBSD");
        assert_eq!(os_name("haiku"), "haiku");
    }

    #[test]
    fn reads_the_macos_product_version() {
        let plist = "<dict>\n\t<key>ProductName</key>\n\t<string>macOS</string>\n\
                     \t<key>ProductVersion</key>\n\t<string>14.2.1</string>\n</dict>";
        assert_eq!(plist_string(plist, "ProductVersion"), Some("14.2.1"));
        assert_eq!(plist_string(plist, "BuildVersion"), None);
    }

    #[test]
    fn the_release_id_falls_back_to_the_environment() {
        let from_env = with_release_env(true, None, None, Some(" rel-env \n".into()));
        assert_eq!(from_env.release_id.as_deref(), Some("rel-env"));
        let given = with_release_env(true, Some("rel".into()), None, Some("rel-env".into()));
        assert_eq!(given.release_id.as_deref(), Some("rel"));
        let blank = with_release_env(true, Some(" ".into()), None, Some("".into()));
        assert_eq!(blank.release_id, None);
    }

    #[test]
    fn blank_values_are_unset() {
        let system = system_properties(true, Some("  ".into()), Some(" 1.2 ".into()));
        assert_eq!(system.app_version.as_deref(), Some("1.2"));
        assert!(system.is_server);
        if cfg!(target_os = "linux") {
            assert_eq!(system.os.as_deref(), Some("Linux"));
            let version = system.os_version.expect("/proc/sys/kernel/osrelease");
            assert_eq!(version, version.trim());
        }
    }
}
