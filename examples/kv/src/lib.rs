//! A sharded key-value store: one entity per key, on the node owning the key's shard.
//!
//! Every node serves the same HTTP API on its dashboard address; whichever node receives a
//! request, the entity owning the key answers:
//!
//! | request | answer |
//! |---|---|
//! | `PUT /kv/{key}` (body: the value, a JSON string) | `{"key", "value", "write_id", "node", "shard"}` |
//! | `GET /kv/{key}` | the same, or 404 `{"error": "not found", ...}` |
//! | `DELETE /kv/{key}` | `{"key", "deleted", "write_id", "node", "shard"}` |
//! | `POST /kv/{key}/cas` `{"expect": value or null, "value": value}` | 200 as `PUT`, or 409 with the current value |
//! | `POST /kv/{key}/append` (body: an element, a JSON string) | the key's append-only set, `{"set": [...], ...}` |
//! | `GET /kv/{key}/set` | the key's append-only set |
//!
//! Bodies are JSON, sent as `Content-Type: application/json`: a request with another content type
//! is refused (415), so a cross-site form cannot write. What a key stores is bounded: a value of
//! at most [`MAX_VALUE`] bytes, a set of at most [`MAX_SET`] elements of at most [`MAX_ELEMENT`]
//! bytes each (413 beyond, nothing stored).
//!
//! Every answer also carries `epoch` (the shard's fencing epoch on the node that answered) and
//! `instance` (the entity incarnation that answered: a restarted or moved entity starts empty).
//!
//! Values live in the entity's memory: they survive moves of nothing. When a shard moves (its
//! owner dies, or a rebalance), its keys start empty on the new owner. Durability comes with
//! replicas (a later issue); until then this is the workload for the routing and safety tests,
//! not a database.

use actix::prelude::*;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use clusterfunk::{Cluster, EntityInfo, SendFailure, ShardedActor};
use serde::{Deserialize, Serialize};

/// The largest value a key stores, in bytes.
pub const MAX_VALUE: usize = 64 << 10;
/// The most elements a key's set holds.
pub const MAX_SET: usize = 100_000;
/// The largest set element, in bytes.
pub const MAX_ELEMENT: usize = 256;

/// The node app: the KV entity and its routes.
pub const APP: clusterfunk_demo::App = clusterfunk_demo::App { register: |b| b.entity::<Kv>(), routes, traffic: None };

/// One key's value.
pub struct Kv {
    key: String,
    value: Option<String>,
    write_id: Option<String>,
    set: Vec<String>,
    instance: String,
    info: EntityInfo,
}

impl Actor for Kv {
    type Context = Context<Self>;
}

impl ShardedActor for Kv {
    type Key = String;
    type Messages = (Get, Put, Delete, Cas, Append);
    fn from_key(key: &String, info: EntityInfo) -> Self {
        let instance = format!("{:016x}", rand::random::<u64>());
        Kv { key: key.clone(), value: None, write_id: None, set: Vec::new(), instance, info }
    }
}

/// What every answer carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The key.
    pub key: String,
    /// The value after the operation (`None`: absent).
    pub value: Option<String>,
    /// The id of the write that produced `value` (unique per write).
    pub write_id: Option<String>,
    /// Whether the operation did what it asked (CAS matched, DELETE found the key).
    pub ok: bool,
    /// The node that answered.
    pub node: String,
    /// The key's shard.
    pub shard: u32,
    /// The shard's epoch on the node that answered (its fencing token).
    pub epoch: u64,
    /// The key's append-only set (in insertion order).
    pub set: Vec<String>,
    /// This incarnation of the key's entity (random, from its start): values live in entity
    /// memory, so a new incarnation starts empty.
    pub instance: String,
}

impl Kv {
    fn reply(&self, ok: bool) -> Reply {
        Reply {
            key: self.key.clone(),
            value: self.value.clone(),
            write_id: self.write_id.clone(),
            ok,
            node: self.info.node.to_string(),
            shard: self.info.shard.0,
            epoch: self.info.epoch.0,
            set: self.set.clone(),
            instance: self.instance.clone(),
        }
    }

    fn write(&mut self, value: Option<String>) {
        self.value = value;
        self.write_id = Some(format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()));
    }
}

/// Reads the value.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Reply")]
pub struct Get;

/// Sets the value.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Reply")]
pub struct Put(pub String);

/// Removes the value.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Reply")]
pub struct Delete;

/// Sets the value if the current one is `expect`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Reply")]
pub struct Cas {
    /// The value expected now (`None`: absent).
    pub expect: Option<String>,
    /// The value to set.
    pub value: String,
}

/// Adds an element to the key's append-only set (a repeated element is kept once).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Reply")]
pub struct Append(pub String);

impl Handler<Append> for Kv {
    type Result = MessageResult<Append>;
    fn handle(&mut self, Append(x): Append, _: &mut Context<Self>) -> Self::Result {
        if self.set.contains(&x) {
            return MessageResult(self.reply(true));
        }
        // Full: nothing added, and the answer says so.
        if self.set.len() >= MAX_SET || x.len() > MAX_ELEMENT {
            return MessageResult(self.reply(false));
        }
        self.set.push(x);
        MessageResult(self.reply(true))
    }
}

impl Handler<Get> for Kv {
    type Result = MessageResult<Get>;
    fn handle(&mut self, _: Get, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.reply(self.value.is_some()))
    }
}

impl Handler<Put> for Kv {
    type Result = MessageResult<Put>;
    fn handle(&mut self, Put(v): Put, _: &mut Context<Self>) -> Self::Result {
        self.write(Some(v));
        MessageResult(self.reply(true))
    }
}

impl Handler<Delete> for Kv {
    type Result = MessageResult<Delete>;
    fn handle(&mut self, _: Delete, _: &mut Context<Self>) -> Self::Result {
        let existed = self.value.is_some();
        if existed {
            self.write(None);
        }
        MessageResult(self.reply(existed))
    }
}

impl Handler<Cas> for Kv {
    type Result = MessageResult<Cas>;
    fn handle(&mut self, cas: Cas, _: &mut Context<Self>) -> Self::Result {
        let ok = self.value == cas.expect;
        if ok {
            self.write(Some(cas.value));
        }
        MessageResult(self.reply(ok))
    }
}

fn answer<M>(r: Result<Reply, SendFailure<M>>, missing: u16) -> HttpResponse {
    match r {
        Ok(reply) if reply.ok => HttpResponse::Ok().json(reply),
        Ok(reply) if missing == 404 => HttpResponse::NotFound().json(serde_json::json!({
            "error": "not found", "key": reply.key, "node": reply.node, "shard": reply.shard, "epoch": reply.epoch,
            "instance": reply.instance
        })),
        Ok(reply) => HttpResponse::Conflict().json(serde_json::json!({
            "error": "compare-and-set failed", "key": reply.key, "value": reply.value,
            "write_id": reply.write_id, "node": reply.node, "shard": reply.shard, "epoch": reply.epoch,
            "instance": reply.instance
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() })),
    }
}

#[get("/kv/{key}")]
async fn get_key(cluster: web::Data<Cluster>, key: web::Path<String>) -> HttpResponse {
    answer(cluster.sharded::<Kv>().send(&key.into_inner(), Get).await, 404)
}

/// A JSON body of a mutating request, or the answer that refuses it: another content type is
/// 415 (a cross-site form sends `application/x-www-form-urlencoded`, `multipart/form-data` or
/// `text/plain`, never JSON), a body that does not parse is 400.
fn json_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
    what: &str,
) -> Result<T, Box<HttpResponse>> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return Err(Box::new(
            HttpResponse::UnsupportedMediaType()
                .json(serde_json::json!({ "error": "the body must be JSON, sent as Content-Type: application/json" })),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(
            HttpResponse::BadRequest().json(serde_json::json!({ "error": format!("the body must be {what}: {e}") })),
        )
    })
}

fn too_large(what: &str, max: usize) -> HttpResponse {
    HttpResponse::PayloadTooLarge()
        .json(serde_json::json!({ "error": format!("{what} is over {max} bytes; nothing stored") }))
}

#[put("/kv/{key}")]
async fn put_key(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let value: String = match json_body(&req, &body, "the value, a JSON string") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if value.len() > MAX_VALUE {
        return too_large("the value", MAX_VALUE);
    }
    answer(cluster.sharded::<Kv>().send(&key.into_inner(), Put(value)).await, 409)
}

#[delete("/kv/{key}")]
async fn delete_key(cluster: web::Data<Cluster>, key: web::Path<String>) -> HttpResponse {
    answer(cluster.sharded::<Kv>().send(&key.into_inner(), Delete).await, 404)
}

/// The body of `POST /kv/{key}/cas`.
#[derive(Deserialize)]
struct CasBody {
    expect: Option<String>,
    value: String,
}

#[post("/kv/{key}/cas")]
async fn cas_key(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let CasBody { expect, value } = match json_body(&req, &body, "{\"expect\": value or null, \"value\": value}") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if value.len() > MAX_VALUE {
        return too_large("the value", MAX_VALUE);
    }
    answer(cluster.sharded::<Kv>().send(&key.into_inner(), Cas { expect, value }).await, 409)
}

#[post("/kv/{key}/append")]
async fn append_key(
    cluster: web::Data<Cluster>,
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let elem: String = match json_body(&req, &body, "the element, a JSON string") {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if elem.len() > MAX_ELEMENT {
        return too_large("the element", MAX_ELEMENT);
    }
    match cluster.sharded::<Kv>().send(&key.into_inner(), Append(elem)).await {
        Ok(reply) if !reply.ok => HttpResponse::InsufficientStorage().json(serde_json::json!({
            "error": format!("the set is full ({MAX_SET} elements); nothing added"), "key": reply.key,
            "node": reply.node, "shard": reply.shard, "epoch": reply.epoch, "instance": reply.instance
        })),
        r => answer(r, 409),
    }
}

#[get("/kv/{key}/set")]
async fn get_set(cluster: web::Data<Cluster>, key: web::Path<String>) -> HttpResponse {
    answer(cluster.sharded::<Kv>().send(&key.into_inner(), Get).await.map(|r| Reply { ok: true, ..r }), 404)
}

/// The KV routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_key).service(put_key).service(delete_key).service(cas_key).service(append_key).service(get_set);
}
