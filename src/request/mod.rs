//! The request as portico judges it: one canonical view of its host and path ([`view`]),
//! computed once before routing, which routing and every policy read.

pub mod view;

use crate::routing::Router;
pub use view::{Refusal, View};

/// The route for `view`: `Ok(None)` when none matches. 400 when an origin that reads `%2F` or
/// `%5C` as a separator would see a path another route claims (`/api%2Fadmin/x` beside an
/// `/api/admin/` route): what portico judged and what the origin serves must be one route.
pub fn route(router: &Router, view: &View) -> Result<Option<usize>, Refusal> {
    let host = view.host.as_deref();
    let found = router.find(host, &view.path);
    if let Some(separated) = view.separated_path() {
        if router.find(host, &separated) != found {
            return Err(Refusal {
                status: 400,
                why: "an encoded slash in the path would reach another route\n",
            });
        }
    }
    Ok(found)
}
