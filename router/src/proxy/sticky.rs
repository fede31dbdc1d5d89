//! Sticky sessions: keep a session on the instance that created it.
//!
//! When a backend sets one of the sticky cookies (default `JSESSIONID`), the router adds its own
//! `__VCAP_ID__=<instance id>` cookie with the same lifetime and flags. A later request carrying both cookies goes
//! back to that instance while it exists; if it is gone, the request goes elsewhere and the cookie is re-pinned.

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap, SET_COOKIE};

/// The router's cookie name.
pub const VCAP_COOKIE: &str = "__VCAP_ID__";

/// The instance a request asks to stick to: the `__VCAP_ID__` value, if a sticky cookie is also present.
pub fn requested_instance<'a>(headers: &'a HeaderMap, sticky_names: &[String]) -> Option<&'a [u8]> {
    let mut instance = None;
    let mut has_session = false;
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let (name, cookie_value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair.get(..eq).unwrap_or_default(), pair.get(eq + 1..).unwrap_or_default()),
                None => continue,
            };
            if name == VCAP_COOKIE.as_bytes() {
                instance = Some(cookie_value.trim_ascii());
            } else if sticky_names.iter().any(|s| s.as_bytes() == name) {
                has_session = true;
            }
        }
    }
    instance.filter(|id| has_session && !id.is_empty())
}

/// Attributes copied from the backend's session cookie onto ours.
#[derive(Debug, Default, PartialEq, Eq)]
struct SessionAttributes<'a> {
    expires: Option<&'a str>,
    max_age: Option<&'a str>,
    same_site: Option<&'a str>,
    secure: bool,
}

fn parse_set_cookie<'a>(value: &'a str, sticky_names: &[String]) -> (Option<&'a str>, Option<SessionAttributes<'a>>) {
    let mut parts = value.split(';');
    let name = parts.next().and_then(|first| first.split_once('=')).map(|(n, _)| n.trim());
    let Some(name) = name else { return (None, None) };
    if !sticky_names.iter().any(|s| s == name) {
        return (Some(name), None);
    }
    let mut attributes = SessionAttributes::default();
    for attribute in parts {
        let (key, val) = attribute.split_once('=').map_or((attribute.trim(), ""), |(k, v)| (k.trim(), v.trim()));
        if key.eq_ignore_ascii_case("expires") {
            attributes.expires = Some(val);
        } else if key.eq_ignore_ascii_case("max-age") {
            attributes.max_age = Some(val);
        } else if key.eq_ignore_ascii_case("samesite") {
            attributes.same_site = Some(val);
        } else if key.eq_ignore_ascii_case("secure") {
            attributes.secure = true;
        }
    }
    (Some(name), Some(attributes))
}

/// What the response needs to pin a session.
pub struct Pin<'a> {
    /// The instance that served the request.
    pub instance_id: &'a str,
    /// The route's context path (`/` for host routes), the cookie's Path.
    pub path: &'a str,
    /// The instance the request asked for, if it carried sticky cookies.
    pub requested: Option<&'a [u8]>,
    /// Always mark the cookie Secure.
    pub secure_cookies: bool,
}

/// Adds `__VCAP_ID__` to the response when the backend started a session, or when a sticky request had to go to
/// another instance. Leaves the response alone if the backend set `__VCAP_ID__` itself.
pub fn pin_session(headers: &mut HeaderMap, pin: &Pin<'_>, sticky_names: &[String]) {
    if pin.instance_id.is_empty() {
        return;
    }
    let mut session = None;
    for value in headers.get_all(SET_COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        match parse_set_cookie(text, sticky_names) {
            (Some(name), _) if name == VCAP_COOKIE => return,
            (_, Some(attributes)) if session.is_none() => session = Some(attributes),
            _ => {}
        }
    }
    let moved = pin.requested.is_some_and(|requested| requested != pin.instance_id.as_bytes());
    if session.is_none() && !moved {
        return;
    }
    let attributes = session.unwrap_or_default();
    let mut cookie = format!("{VCAP_COOKIE}={}; Path={}; HttpOnly", pin.instance_id, pin.path);
    if let Some(max_age) = attributes.max_age {
        cookie.push_str("; Max-Age=");
        cookie.push_str(max_age);
    }
    if let Some(expires) = attributes.expires {
        cookie.push_str("; Expires=");
        cookie.push_str(expires);
    }
    if attributes.secure || pin.secure_cookies {
        cookie.push_str("; Secure");
    }
    if let Some(same_site) = attributes.same_site {
        cookie.push_str("; SameSite=");
        cookie.push_str(same_site);
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["JSESSIONID".to_owned()]
    }

    fn headers(name: http::header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_request_sticks_only_with_both_cookies() {
        let both = headers(COOKIE, &["JSESSIONID=abc; __VCAP_ID__=inst-1"]);
        assert_eq!(requested_instance(&both, &names()), Some(&b"inst-1"[..]));
        let split = headers(COOKIE, &["JSESSIONID=abc", "other=1; __VCAP_ID__=inst-2"]);
        assert_eq!(requested_instance(&split, &names()), Some(&b"inst-2"[..]));
        let vcap_only = headers(COOKIE, &["__VCAP_ID__=inst-1"]);
        assert_eq!(requested_instance(&vcap_only, &names()), None);
        assert_eq!(requested_instance(&HeaderMap::new(), &names()), None);
    }

    #[test]
    fn a_new_session_gets_pinned_with_its_attributes() {
        let mut h = headers(SET_COOKIE, &["JSESSIONID=xyz; Path=/; Max-Age=3600; Secure; SameSite=Lax; HttpOnly"]);
        pin_session(&mut h, &Pin { instance_id: "inst-9", path: "/app", requested: None, secure_cookies: false }, &names());
        let set: Vec<_> = h.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(set[1], "__VCAP_ID__=inst-9; Path=/app; HttpOnly; Max-Age=3600; Secure; SameSite=Lax");
    }

    #[test]
    fn no_session_no_cookie_unless_the_request_moved() {
        let mut h = HeaderMap::new();
        pin_session(&mut h, &Pin { instance_id: "inst-1", path: "/", requested: Some(b"inst-1"), secure_cookies: false }, &names());
        assert!(h.get(SET_COOKIE).is_none());
        pin_session(&mut h, &Pin { instance_id: "inst-2", path: "/", requested: Some(b"inst-1"), secure_cookies: true }, &names());
        assert_eq!(h[SET_COOKIE], "__VCAP_ID__=inst-2; Path=/; HttpOnly; Secure");
    }

    #[test]
    fn backend_set_vcap_id_wins() {
        let mut h = headers(SET_COOKIE, &["JSESSIONID=1", "__VCAP_ID__=mine"]);
        pin_session(&mut h, &Pin { instance_id: "inst-1", path: "/", requested: None, secure_cookies: false }, &names());
        assert_eq!(h.get_all(SET_COOKIE).iter().count(), 2);
    }
}
