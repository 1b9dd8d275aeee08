//! The demo's sharded service: a counter per key.

use actix::prelude::*;
use actix_web::{post, web, HttpResponse};
use clusterfunk::{Cluster, EntityInfo, ShardedActor};
use serde::{Deserialize, Serialize};

/// One counter per key, living on the node that owns the key's shard.
pub struct Counter {
    n: u64,
    info: EntityInfo,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl ShardedActor for Counter {
    type Key = String;
    type Messages = (Add,);

    fn from_key(_key: &String, info: EntityInfo) -> Self {
        Counter { n: 0, info }
    }
}

/// Adds to a counter; answers with its new value and where it lives.
#[derive(Message, Serialize, Deserialize, Debug)]
#[rtype(result = "Added")]
pub struct Add(pub u64);

/// The answer to [`Add`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The counter after the addition.
    pub value: u64,
    /// The node that answered.
    pub node: String,
    /// The key's shard.
    pub shard: u32,
}

impl Handler<Add> for Counter {
    type Result = MessageResult<Add>;

    fn handle(&mut self, Add(k): Add, _: &mut Context<Self>) -> Self::Result {
        self.n += k;
        MessageResult(Added { value: self.n, node: self.info.node.to_string(), shard: self.info.shard.0 })
    }
}

/// `POST /counter/{key}` (`Content-Type: application/json`, no body needed): adds 1 to the key's
/// counter, wherever it lives. Another content type is refused (415): a cross-site form cannot
/// send JSON. A counter stores one number per key.
#[post("/counter/{key}")]
async fn add(cluster: web::Data<Cluster>, req: actix_web::HttpRequest, key: web::Path<String>) -> HttpResponse {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return HttpResponse::UnsupportedMediaType()
            .json(serde_json::json!({ "error": "send Content-Type: application/json (a cross-site form cannot)" }));
    }
    match cluster.sharded::<Counter>().send(&key.into_inner(), Add(1)).await {
        Ok(added) => HttpResponse::Ok().json(added),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() })),
    }
}

/// The demo's HTTP routes, served beside the dashboard.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(add);
}
