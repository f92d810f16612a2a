// WhoAmI is device -> server: a device's handler cannot answer it.
use tether_core::method::builtin::{Identity, WhoAmI};
use tether_firmware::{Request, Responded, Responder};

fn wrong_way(_req: Request<'_>, reply: Responder<'_>) -> Responded {
    let me = Identity { user_id: 1, username: "alice", session_id: 1, is_superuser: false };
    reply.ok::<WhoAmI>(&me)
}

fn main() {
    let _ = wrong_way;
}
