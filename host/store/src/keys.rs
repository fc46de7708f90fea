//! Templar's object names (spec §1), built and parsed here and nowhere else.
//!
//! Every name ends in the run's version `V` (`0.2.73`), matched literally: a name for another version, or with
//! anything around the numbers, is not ours. Windows and counts are decimal `u64`s without signs or padding checks
//! beyond what `u64::from_str` accepts.

/// `gradient-{w}-{uid}-v{V}.pt`: a miner's compressed gradient for window `w`, in the miner's bucket.
pub fn gradient(window: u64, uid: u16, version: &str) -> String {
    format!("gradient-{window}-{uid}-v{version}.pt")
}

/// `aggregator-{w}-v{V}.pt`: this server's aggregate of window `w`, in its own bucket.
pub fn aggregate(window: u64, version: &str) -> String {
    format!("{AGGREGATE_PREFIX}{window}-v{version}.pt")
}

/// `receipt-{w}-v{V}.json`: this server's receipt of window `w` (what produced the aggregate), beside it.
pub fn receipt(window: u64, version: &str) -> String {
    format!("{RECEIPT_PREFIX}{window}-v{version}.json")
}

/// `inputs/{w}/gradient-{w}-{uid}-v{V}.pt`: a copy of a peer's aggregated file in this server's bucket
/// (`archive_inputs`), so that window `w` stays reproducible after the miner deletes its file. The only keys this
/// server writes outside the bucket root.
pub fn archived_input(window: u64, uid: u16, version: &str) -> String {
    format!("{ARCHIVE_PREFIX}{window}/{}", gradient(window, uid, version))
}

/// `debug-{w}-{uid}-v{V}.pt`: the leader validator's debug dict of window `w` (catch-up verification).
pub fn debug(window: u64, uid: u16, version: &str) -> String {
    format!("debug-{window}-{uid}-v{version}.pt")
}

/// `peers_{n}_v{V}.json`: the leader's peer list posted at window `n`.
pub fn peer_list(n: u64, version: &str) -> String {
    format!("{PEER_LIST_PREFIX}{n}_v{version}.json")
}

/// `start_window_v{V}.json`: the leader's start window.
pub fn start_window(version: &str) -> String {
    format!("start_window_v{version}.json")
}

/// What every aggregate name starts with (for listings).
pub const AGGREGATE_PREFIX: &str = "aggregator-";

/// What every receipt name starts with.
pub const RECEIPT_PREFIX: &str = "receipt-";

/// The folder of archived inputs.
pub const ARCHIVE_PREFIX: &str = "inputs/";

/// What every peer list name starts with (for listings).
pub const PEER_LIST_PREFIX: &str = "peers_";

/// The window of an aggregate name of `version`; `None` for any other name.
pub fn parse_aggregate(name: &str, version: &str) -> Option<u64> {
    number_between(name, AGGREGATE_PREFIX, &format!("-v{version}.pt"))
}

/// The window of a receipt name of `version`; `None` for any other name.
pub fn parse_receipt(name: &str, version: &str) -> Option<u64> {
    number_between(name, RECEIPT_PREFIX, &format!("-v{version}.json"))
}

/// The window of an archived input name of `version` (`inputs/{w}/gradient-{w}-{uid}-v{V}.pt`, both windows the
/// same); `None` for any other name.
pub fn parse_archived_input(name: &str, version: &str) -> Option<u64> {
    let (folder, file) = name.strip_prefix(ARCHIVE_PREFIX)?.split_once('/')?;
    let (w, _, v) = parse_gradient(file)?;
    (v == version && folder.parse::<u64>().ok() == Some(w) && folder == w.to_string()).then_some(w)
}

/// The `n` of a peer list name of `version`; `None` for any other name.
pub fn parse_peer_list(name: &str, version: &str) -> Option<u64> {
    number_between(name, PEER_LIST_PREFIX, &format!("_v{version}.json"))
}

/// `(window, uid, version)` of a gradient name of any version; `None` for any other name.
pub fn parse_gradient(name: &str) -> Option<(u64, u16, &str)> {
    let rest = name.strip_prefix("gradient-")?.strip_suffix(".pt")?;
    let (w, rest) = rest.split_once('-')?;
    let (uid, version) = rest.split_once("-v")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(uid) || version.is_empty() {
        return None;
    }
    Some((w.parse().ok()?, uid.parse().ok()?, version))
}

/// The decimal number between `prefix` and `suffix` that make up the whole of `name` (a key at the bucket root: a
/// key in a folder is not Templar's).
fn number_between(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(gradient(100203, 3, "0.2.73"), "gradient-100203-3-v0.2.73.pt");
        assert_eq!(aggregate(100203, "0.2.73"), "aggregator-100203-v0.2.73.pt");
        assert_eq!(debug(100203, 1, "0.2.73"), "debug-100203-1-v0.2.73.pt");
        assert_eq!(peer_list(100200, "0.2.73"), "peers_100200_v0.2.73.json");
        assert_eq!(start_window("0.2.73"), "start_window_v0.2.73.json");
        assert_eq!(parse_gradient(&gradient(7, 11, "0.2.73")), Some((7, 11, "0.2.73")));
        assert_eq!(parse_aggregate(&aggregate(7, "0.2.73"), "0.2.73"), Some(7));
        assert_eq!(parse_peer_list(&peer_list(7, "0.2.73"), "0.2.73"), Some(7));
        assert_eq!(receipt(7, "0.2.73"), "receipt-7-v0.2.73.json");
        assert_eq!(parse_receipt(&receipt(7, "0.2.73"), "0.2.73"), Some(7));
        assert_eq!(archived_input(7, 3, "0.2.73"), "inputs/7/gradient-7-3-v0.2.73.pt");
        assert_eq!(parse_archived_input(&archived_input(7, 3, "0.2.73"), "0.2.73"), Some(7));
        assert_eq!(parse_archived_input("inputs/8/gradient-7-3-v0.2.73.pt", "0.2.73"), None);
        assert_eq!(
            parse_archived_input("inputs/07/gradient-7-3-v0.2.73.pt", "0.2.73"),
            None
        );
        assert_eq!(parse_archived_input("inputs/7/gradient-7-3-v0.2.74.pt", "0.2.73"), None);
        assert_eq!(
            parse_archived_input("inputs/7/x/gradient-7-3-v0.2.73.pt", "0.2.73"),
            None
        );
    }

    #[test]
    fn names_match_exactly() {
        assert_eq!(
            parse_aggregate("aggregator-100203-v0x2x73.pt", "0.2.73"),
            None,
            "dots are literal"
        );
        assert_eq!(parse_aggregate("aggregator--v0.2.73.pt", "0.2.73"), None);
        assert_eq!(parse_aggregate("aggregator-1-2-v0.2.73.pt", "0.2.73"), None);
        assert_eq!(parse_aggregate("aggregator-+1-v0.2.73.pt", "0.2.73"), None);
        assert_eq!(parse_aggregate("aggregator-1-v0.2.74.pt", "0.2.73"), None);
        assert_eq!(
            parse_aggregate("dir/aggregator-5-v0.2.73.pt", "0.2.73"),
            None,
            "not at the root"
        );
        assert_eq!(parse_peer_list("peers_100200_v0.2.73.json", "0.2.73"), Some(100200));
        assert_eq!(parse_gradient("gradient-1-99999-v0.2.73.pt"), None, "uid over u16");
        assert_eq!(parse_gradient("gradient-1-+2-v0.2.73.pt"), None);
        assert_eq!(parse_gradient("gradient-1-2-v.pt"), None);
        assert_eq!(parse_gradient("gradient-1-2.pt"), None);
    }
}
