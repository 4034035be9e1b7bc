use super::*;

const DIR: &str = "https://acme.test/dir";
const DAY: i64 = 86_400;

fn held(name: &str, not_before: i64, not_after: i64) -> Held {
    Held {
        name: name.into(),
        identifiers: vec![name.into()],
        not_before,
        not_after,
        directory: DIR.into(),
    }
}

fn names(p: &Plan) -> Vec<(&str, Reason)> {
    p.due
        .iter()
        .map(|d| (d.wanted.name.as_str(), d.reason))
        .collect()
}

#[test]
fn wanted_is_the_domain_then_each_public_service() {
    let w = wanted("Example.COM.", &["gemini".into(), "api".into()], false);
    let got: Vec<_> = w.iter().map(|w| w.identifiers.clone()).collect();
    assert_eq!(
        got,
        vec![
            vec!["example.com".to_string()],
            vec!["api.example.com".to_string()],
            vec!["gemini.example.com".to_string()],
        ]
    );
    assert_eq!(w[0].name, "example.com");
}

#[test]
fn wildcard_mode_wants_one_certificate_and_no_service_names() {
    let w = wanted("example.com", &["gemini".into()], true);
    assert_eq!(
        w,
        vec![Wanted {
            name: "example.com".into(),
            identifiers: vec!["example.com".into(), "*.example.com".into()],
        }]
    );
}

#[test]
fn new_names_are_ordered_at_once() {
    let w = wanted("example.com", &["a".into()], false);
    let p = plan(&w, &[], &BTreeMap::new(), DIR, 1000);
    assert_eq!(
        names(&p),
        vec![("example.com", Reason::New), ("a.example.com", Reason::New)]
    );
    assert!(p.drop.is_empty());
}

#[test]
fn renewal_is_due_at_two_thirds_of_the_lifetime() {
    let w = wanted("example.com", &[], false);
    let h = [held("example.com", 0, 90 * DAY)];
    let at = 60 * DAY;
    let before = plan(&w, &h, &BTreeMap::new(), DIR, at - 1);
    assert!(before.due.is_empty());
    assert_eq!(before.next_wake, Some(at));
    let after = plan(&w, &h, &BTreeMap::new(), DIR, at);
    assert_eq!(names(&after), vec![("example.com", Reason::Renew)]);
}

#[test]
fn renew_at_handles_short_and_odd_lifetimes() {
    assert_eq!(renew_at(100, 100 + 3), 102);
    assert_eq!(renew_at(100, 100 + 300), 300);
    assert_eq!(renew_at(0, 1), 0);
    assert_eq!(
        renew_at(50, 10),
        50,
        "a backwards lifetime renews at not_before"
    );
    assert!(renew_at(0, i64::MAX) > 0, "no overflow");
}

#[test]
fn a_name_no_longer_wanted_is_dropped() {
    let w = wanted("example.com", &["a".into()], false);
    let h = [
        held("example.com", 0, 90 * DAY),
        held("a.example.com", 0, 90 * DAY),
        held("gone.example.com", 0, 90 * DAY),
    ];
    let p = plan(&w, &h, &BTreeMap::new(), DIR, DAY);
    assert!(p.due.is_empty());
    assert_eq!(p.drop, vec!["gone.example.com".to_string()]);
}

#[test]
fn another_directory_or_other_names_order_again() {
    let w = wanted("example.com", &[], true);
    let h = [held("example.com", 0, 90 * DAY)];
    let p = plan(&w, &h, &BTreeMap::new(), DIR, DAY);
    assert_eq!(names(&p), vec![("example.com", Reason::Changed)]);

    let w = wanted("example.com", &[], false);
    let p = plan(&w, &h, &BTreeMap::new(), "https://other.test/dir", DAY);
    assert_eq!(names(&p), vec![("example.com", Reason::Changed)]);
}

#[test]
fn a_failed_name_waits_for_its_backoff() {
    let w = wanted("example.com", &["a".into()], false);
    let mut b = BTreeMap::new();
    b.insert(
        "a.example.com".to_string(),
        Backoff::default().failed(1000, None),
    );
    let p = plan(&w, &[], &b, DIR, 1005);
    assert_eq!(names(&p), vec![("example.com", Reason::New)]);
    assert_eq!(p.next_wake, Some(1010));
    let p = plan(&w, &[], &b, DIR, 1010);
    assert_eq!(names(&p).len(), 2);
}

#[test]
fn backoff_doubles_from_ten_seconds_up_to_an_hour() {
    let delays: Vec<i64> = (1..=11).map(backoff_delay).collect();
    assert_eq!(
        delays,
        vec![10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    );
    assert_eq!(backoff_delay(u32::MAX), 3600);
    let mut b = Backoff::default();
    for _ in 0..3 {
        b = b.failed(0, None);
    }
    assert_eq!(
        b,
        Backoff {
            failures: 3,
            next_try: 40
        }
    );
}

#[test]
fn a_later_retry_after_wins_and_an_earlier_one_does_not() {
    let b = Backoff::default().failed(1000, Some(1000 + 7200));
    assert_eq!(b.next_try, 8200);
    let b = Backoff::default().failed(1000, Some(1001));
    assert_eq!(b.next_try, 1010);
    let b = Backoff::default().failed(1000, Some(i64::MAX));
    assert_eq!(b.next_try, 1000 + RETRY_AFTER_CAP);
}

#[test]
fn an_expired_certificate_in_backoff_is_not_ordered_early() {
    let w = wanted("example.com", &[], false);
    let h = [held("example.com", 0, 10)];
    let mut b = BTreeMap::new();
    b.insert(
        "example.com".to_string(),
        Backoff {
            failures: 4,
            next_try: 500,
        },
    );
    let p = plan(&w, &h, &b, DIR, 100);
    assert!(p.due.is_empty());
    assert_eq!(p.next_wake, Some(500));
}

#[test]
fn nothing_scheduled_means_no_wake_up() {
    let p = plan(&[], &[], &BTreeMap::new(), DIR, 0);
    assert_eq!(p, Plan::default());
}
