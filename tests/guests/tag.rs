// Shared by tag-v1 and tag-v2: an echo that tags each reply with its
// version and a per-route message count kept in the host key-value store,
// so tests can see which version answered and that state survived a swap.
//
// Text commands: `count` answers the stored count; `record` answers
// `<version>:<path>:<query>` from this connection's record; anything else is
// echoed as `<version>:<count>:<text>` after counting it.

use switchyard_sdk::{Connection, Controller, Message, socket_route, state};

#[socket_route(route = "/tag", name = "tag")]
#[derive(Default)]
struct Tag;

impl Controller for Tag {
    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let text = msg.as_text()?;
        if text == "record" {
            return Some(Message::text(format!("{VERSION}:{}:{:?}", conn.path, conn.query)));
        }
        let count: u64 = state::get_json("count").unwrap_or(0);
        if text == "count" {
            return Some(Message::text(count.to_string()));
        }
        let count = count + 1;
        state::set_json("count", &count).expect("the count fits");
        Some(Message::text(format!("{VERSION}:{count}:{text}")))
    }
}
