//! `redirect_https: true`: a request over plain HTTP gets 301 to the same URL on https, before
//! any other policy.

use super::{Answer, Filter, Flow, Phases, Request};
use crate::request::View;
use http::header;

pub struct RedirectHttps;

impl Filter for RedirectHttps {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        if req.client.tls {
            return Flow::Continue;
        }
        Flow::Respond(
            Answer::new("redirect_https", 301, "moved to https\n")
                .with_header(header::LOCATION, location(req.view)),
        )
    }
}

/// `https://` + the canonical host (without its port: the https listener's is the default)
/// and path; the query as received.
fn location(view: &View) -> String {
    let host = view.host.as_deref().unwrap_or("localhost");
    match &view.query {
        Some(q) => format!("https://{host}{}?{q}", view.path),
        None => format!("https://{host}{}", view.path),
    }
}
