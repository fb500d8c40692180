//! A TCP forwarder that tests take down (refusing and cutting connections) and bring back: a broker
//! outage as a gateway sees it, without stopping the broker.

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to `127.0.0.1:target` while up.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    target: u16,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A forwarder on a free port, up.
    pub async fn start(target: u16) -> Self {
        let mut proxy = Self { port: crate::free_port(), target, task: None };
        proxy.up().await;
        proxy
    }

    /// Listens (again) on its port and forwards every connection.
    pub async fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy binds its port again");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every forwarded connection (the JoinSet aborts them when dropped).
    pub fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
