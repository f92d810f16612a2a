// DeviceInfo is server -> device: the device answers it, it cannot call it.
use tether_core::method::builtin::DeviceInfo;
use tether_firmware::{Session, TokioClock, host::TcpTransport};

async fn wrong_way(session: &mut Session<'_, TcpTransport, TokioClock>) {
    let _ = session.call::<DeviceInfo, _>(&(), &mut ()).await;
}

fn main() {
    let _ = wrong_way;
}
