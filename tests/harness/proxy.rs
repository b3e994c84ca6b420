//! A TCP proxy on 127.0.0.1 that a test can cut and restore, as a network outage would: every
//! connection through it drops at once, and nothing connects until it is restored on the same
//! address.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A proxy to one upstream address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    /// The accept loop and every connection's copy; aborted together by [`Proxy::cut`].
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Proxies a free port on 127.0.0.1 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let mut proxy = Proxy {
            addr,
            upstream,
            tasks: JoinSet::new(),
        };
        proxy.accept(listener);
        proxy
    }

    fn accept(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
            // Dropping `connections` aborts every copy, closing both ends.
        });
    }

    /// Drops every connection and stops accepting.
    pub async fn cut(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Accepts again on the same address.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("binding the proxy's address again");
        self.accept(listener);
    }
}
