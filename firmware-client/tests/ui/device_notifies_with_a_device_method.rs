// DeviceInfo is server -> device: the device cannot send it as a notification.
use tether_core::method::builtin::DeviceInfo;
use tether_firmware::{Session, TokioClock, host::TcpTransport};

async fn wrong_way(session: &mut Session<'_, TcpTransport, TokioClock>) {
    let _ = session.notify::<DeviceInfo>(&()).await;
}

fn main() {
    let _ = wrong_way;
}
