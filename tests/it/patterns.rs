//! Event patterns and owner scoping, as DESIGN.md's "Semantics, decided" says.

use thorn::subscriber::pattern_matches;
use thorn::{SenderId, Subscriber};

#[test]
fn pattern_table() {
    let table = [
        ("article.created", "article.created", true),
        ("article.created", "article.changed", false),
        ("article.*", "article.created", true),
        ("article.*", "article.tag.added", true),
        ("article.*", "articles.created", false),
        ("article.*", "user.created", false),
        ("*.created", "article.created", true),
        ("*.created", "article.tag.created", false),
        ("*.tag.created", "article.tag.created", true),
        ("*.created", "created", false),
        ("*", "article.created", true),
        ("*", "anything", true),
        ("article", "article.created", false),
        ("article.created.*", "article.created", false),
        ("*.*", "article.created", false),
    ];
    for (pattern, event, expected) in table {
        assert_eq!(
            pattern_matches(pattern, event),
            expected,
            "{pattern} vs {event}"
        );
    }
}

#[test]
fn owner_scoped_subscribers_receive_only_their_senders_events() {
    let owned = Subscriber::new("article.*", "https://a.example/")
        .unwrap()
        .with_owner(7);
    let open = Subscriber::new("article.*", "https://b.example/").unwrap();
    let seven = SenderId::from(7);
    let eight = SenderId::from(8);
    assert!(owned.wants("article.created", Some(&seven)));
    assert!(!owned.wants("article.created", Some(&eight)));
    assert!(!owned.wants("article.created", None));
    assert!(open.wants("article.created", Some(&eight)));
    assert!(open.wants("article.created", None));
    assert!(!open.wants("user.created", None));
}
