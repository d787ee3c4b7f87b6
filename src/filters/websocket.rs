//! `websocket.enabled: false`: an upgrade request gets 403.

use super::{Answer, Filter, Flow, Phases, Request};

pub struct WebSocketGate;

impl Filter for WebSocketGate {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn request(&self, req: &mut Request<'_>) -> Flow {
        match req.websocket {
            true => Flow::Respond(Answer::new(
                "websocket_disabled",
                403,
                "websocket upgrades are not allowed here\n",
            )),
            false => Flow::Continue,
        }
    }
}
