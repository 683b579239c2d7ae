//! The agent API's OpenAPI document (`crates/wafleet/src/api/openapi.yaml`) held to the API it
//! describes: it is OpenAPI 3.1, it lists exactly the routes the router serves (read from the
//! router's source, so a route added without documentation fails here), and a running API
//! answers as it says about tokens, admin tokens, idempotency keys and request bodies.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use wafleet::store::api_tokens::{self, Grant};
use wafleet_tests::*;

const DOCUMENT: &str = include_str!("../crates/wafleet/src/api/openapi.yaml");

/// The files whose `.route(...)` calls make the API's router.
const ROUTER_SOURCES: [(&str, &str); 2] = [
    (
        "api/mod.rs",
        include_str!("../crates/wafleet/src/api/mod.rs"),
    ),
    (
        "api/channels.rs",
        include_str!("../crates/wafleet/src/api/channels.rs"),
    ),
];

/// HTTP methods as axum's method routers and OpenAPI's path items name them.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A field no request body documents.
const UNKNOWN_FIELD: &str = "not_a_documented_field";

fn document() -> Value {
    serde_norway::from_str(DOCUMENT).expect("openapi.yaml is YAML")
}

/// What an operation needs of the caller, from its `security` (else the document's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Agent,
    Admin,
}

struct Operation<'a> {
    method: String,
    path: &'a str,
    op: &'a Value,
}

impl Operation<'_> {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The security schemes it names, from its `security` (else the document's).
    fn schemes<'d>(&'d self, doc: &'d Value) -> Vec<&'d str> {
        let security = self.op.get("security").unwrap_or(&doc["security"]);
        security
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|requirement| requirement.keys().map(String::as_str))
            .collect()
    }

    fn auth(&self, doc: &Value) -> Auth {
        let schemes = self.schemes(doc);
        if schemes.contains(&"adminToken") {
            Auth::Admin
        } else if schemes.is_empty() {
            Auth::None
        } else {
            Auth::Agent
        }
    }

    fn documents(&self, status: StatusCode) -> bool {
        self.op["responses"].get(status.as_str()).is_some()
    }

    /// Whether the operation documents `status` with a body like `body` (as [`answer`] reads
    /// it: JSON, else the text, `null` for an event stream).
    fn check(&self, doc: &Value, status: StatusCode, body: &Value) -> Result<(), String> {
        let response = self.op["responses"]
            .get(status.as_str())
            .map(|r| resolve(doc, r))
            .ok_or_else(|| format!("{status} is not documented"))?;
        let content = response["content"].as_object();
        match body {
            Value::Null => Ok(()),
            Value::String(text) if text.is_empty() => Ok(()),
            Value::String(_) => content
                .is_some_and(|c| c.keys().any(|t| t != "application/json"))
                .then_some(())
                .ok_or_else(|| format!("{status}: a body that is not JSON is not documented")),
            json => {
                let schema = content
                    .and_then(|c| c.get("application/json"))
                    .map(|c| &c["schema"])
                    .ok_or_else(|| format!("{status}: no JSON body is documented"))?;
                let wrong = conforms(doc, schema, json, "body");
                wrong
                    .is_empty()
                    .then_some(())
                    .ok_or_else(|| wrong.join("; "))
            }
        }
    }

    /// Its parameters, references followed.
    fn parameters<'d>(&'d self, doc: &'d Value) -> Vec<&'d Value> {
        self.op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| resolve(doc, p))
            .collect()
    }

    fn reads_header(&self, doc: &Value, name: &str) -> bool {
        self.parameters(doc)
            .iter()
            .any(|p| p["in"] == "header" && p["name"] == name)
    }

    /// Its path with every parameter replaced by the parameter's example.
    fn concrete_path(&self, doc: &Value) -> String {
        self.path_with(doc, None)
    }

    /// Its path with every parameter replaced by the parameter's example, or by `integer` where
    /// the parameter is an integer and one is given.
    fn path_with(&self, doc: &Value, integer: Option<&str>) -> String {
        let mut path = self.path.to_string();
        for p in self.parameters(doc).iter().filter(|p| p["in"] == "path") {
            let value = match (&p["example"], integer) {
                (_, Some(i)) if p["schema"]["type"] == "integer" => i.to_string(),
                (Value::String(s), _) => s.clone(),
                (other, _) => other.to_string(),
            };
            path = path.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), &value);
        }
        path
    }

    /// Its JSON request body's schema (references followed) and example, if it takes one.
    fn body<'d>(&'d self, doc: &'d Value) -> Option<(&'d Value, &'d Value)> {
        let json = self.op.pointer("/requestBody/content/application~1json")?;
        Some((resolve(doc, &json["schema"]), &json["example"]))
    }
}

fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let paths = doc["paths"].as_object().expect("paths is a map");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter_map(move |m| {
                item.get(*m).map(|op| Operation {
                    method: m.to_uppercase(),
                    path,
                    op,
                })
            })
        })
        .collect()
}

/// `v`, or what its `$ref` names in the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = r
                .strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
                .unwrap_or_else(|| panic!("{r} names nothing in the document"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// What is wrong with `v` by `schema`: the JSON Schema keywords the document uses (type, enum,
/// const, required, properties, additionalProperties, items, allOf), formats left out.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut wrong = Vec::new();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        wrong.extend(conforms(doc, part, v, at));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let is = |t: &str| match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("type {other}"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        wrong.push(format!("{at} is {v}, not {types:?}"));
    }
    if let Some(values) = schema["enum"].as_array().filter(|e| !e.contains(v)) {
        wrong.push(format!("{at} is {v}, not one of {values:?}"));
    }
    if schema.get("const").is_some_and(|c| c != v) {
        wrong.push(format!("{at} is {v}, not {}", schema["const"]));
    }
    if let Some(object) = v.as_object() {
        for field in schema["required"].as_array().into_iter().flatten() {
            if !object.contains_key(field.as_str().unwrap()) {
                wrong.push(format!("{at} has no {field}"));
            }
        }
        let properties = schema["properties"].as_object();
        for (field, value) in object {
            let at = format!("{at}.{field}");
            match (
                properties.and_then(|p| p.get(field)),
                &schema["additionalProperties"],
            ) {
                (Some(s), _) => wrong.extend(conforms(doc, s, value, &at)),
                (None, Value::Bool(false)) => wrong.push(format!("{at} is not documented")),
                (None, s) if s.is_object() => wrong.extend(conforms(doc, s, value, &at)),
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(s)) = (v.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            wrong.extend(conforms(doc, s, item, &format!("{at}[{i}]")));
        }
    }
    wrong
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The `{name}` parameters of a path template.
fn template_names(path: &str) -> BTreeSet<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .collect()
}

#[test]
fn the_document_is_openapi_3_1_and_every_operation_answers_something() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        resolve(&doc, &json!({ "$ref": r }));
    }
    for (name, scheme) in doc["components"]["securitySchemes"].as_object().unwrap() {
        assert_eq!(
            (&scheme["type"], &scheme["scheme"]),
            (&json!("http"), &json!("bearer")),
            "{name}"
        );
    }

    let ops = operations(&doc);
    assert!(!ops.is_empty());
    let mut ids = BTreeSet::new();
    for o in &ops {
        let name = o.name();
        let id = o.op["operationId"].as_str().expect("an operationId");
        for scheme in o.schemes(&doc) {
            let known = &doc["components"]["securitySchemes"][scheme];
            assert!(known.is_object(), "{name}: no security scheme {scheme}");
        }
        assert!(ids.insert(id), "{name}: operationId {id} twice");
        let responses = o.op["responses"].as_object().expect("responses is a map");
        assert!(!responses.is_empty(), "{name} answers nothing");
        for status in responses.keys() {
            assert!(
                status.len() == 3 && status.parse::<u16>().is_ok_and(|s| s >= 100),
                "{name}: {status} is not a status"
            );
        }
        let declared: BTreeSet<&str> = o
            .parameters(&doc)
            .iter()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{name}: {p}"))
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(declared, template_names(o.path), "{name}: path parameters");
        match o.auth(&doc) {
            Auth::None => assert!(!o.documents(StatusCode::UNAUTHORIZED), "{name}"),
            auth => {
                assert!(o.documents(StatusCode::UNAUTHORIZED), "{name}: 401");
                assert_eq!(
                    o.documents(StatusCode::FORBIDDEN),
                    auth == Auth::Admin,
                    "{name}: 403 is for admin-only operations"
                );
            }
        }
        if o.body(&doc).is_some() {
            assert!(o.documents(StatusCode::BAD_REQUEST), "{name}: 400");
        }
    }
}

/// The text from just after an opening parenthesis up to its matching close.
fn within_parentheses(s: &str) -> &str {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' => depth += 1,
            ')' if depth == 0 => return &s[..i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {s:.40}")
}

/// The methods a method router expression serves: `get(show).put(save)`,
/// `axum::routing::put(a).delete(b)`, `get(|| async { "ok" })`.
fn methods_of(router: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let mut rest = router;
    while let Some(open) = rest.find('(') {
        let name_start = rest[..open]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = &rest[name_start..open];
        if METHODS.contains(&name) {
            methods.push(name.to_uppercase());
        }
        // Past the call's arguments: a handler's own parentheses are not routes.
        let args = within_parentheses(&rest[open + 1..]);
        rest = &rest[open + 1 + args.len() + 1..];
    }
    methods
}

/// The (method, path) pairs of every `.route("path", method_router)` call in `source`, comments
/// left out.
fn routes_in(source: &str) -> BTreeSet<(String, String)> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut routes = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let args = within_parentheses(rest);
        let (path, router) = args
            .trim_start()
            .strip_prefix('"')
            .and_then(|a| a.split_once('"'))
            .unwrap_or_else(|| panic!("a route whose path is not a literal: {args}"));
        let router = router
            .trim_start()
            .strip_prefix(',')
            .expect("a method router");
        let methods = methods_of(router);
        assert!(!methods.is_empty(), "no method read in {router}");
        routes.extend(methods.into_iter().map(|m| (m, path.to_string())));
    }
    routes
}

#[test]
fn the_route_reader_sees_every_method_of_a_chained_route() {
    let source = r#"
        Router::new()
            // .route("/commented", get(gone))
            .route("/a/{id}", get(show).put(save))
            .route("/healthz", get(|| async { "ok (really)" }))
            .route(
                "/b/{x}/c",
                axum::routing::put(knowledge_put).delete(knowledge_remove),
            )
            .route("/d", post(with_state(State(get(x)))))
    "#;
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a/{id}"),
        ("PUT", "/a/{id}"),
        ("GET", "/healthz"),
        ("PUT", "/b/{x}/c"),
        ("DELETE", "/b/{x}/c"),
        ("POST", "/d"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(routes_in(source), want);
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    for (file, source) in ROUTER_SOURCES {
        // Routes these would add are not `.route` calls this test reads.
        for call in [".nest(", ".nest_service(", ".route_service(", ".fallback("] {
            assert!(
                !source.contains(call),
                "{file} calls {call}: read those routes here too"
            );
        }
        for merged in source.split(".merge(").skip(1) {
            let merged = within_parentheses(merged).trim();
            assert!(
                ["bounded", "channels::routes()"].contains(&merged),
                "{file} merges {merged}: read its source here too"
            );
        }
    }
    let modules: Vec<&str> = ROUTER_SOURCES[0]
        .1
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = ["pub ", "pub(crate) ", "pub(super) "]
                .iter()
                .find_map(|v| l.strip_prefix(v))
                .unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect();
    assert_eq!(
        modules,
        ["channels"],
        "a new module of the API may add routes"
    );

    let served: BTreeSet<(String, String)> = ROUTER_SOURCES
        .iter()
        .flat_map(|(_, source)| routes_in(source))
        .collect();
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .iter()
        .map(|o| (o.method.clone(), o.path.to_string()))
        .collect();
    assert!(served.contains(&("GET".into(), "/api/v1/openapi.yaml".into())));
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not in openapi.yaml"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in openapi.yaml but not served"
    );
}

/// The API on a fresh database, with an agents' token (every number) and an admin token.
struct Api {
    url: String,
    http: reqwest::Client,
    agent: String,
    admin: String,
    _cfg: TestConfig,
}

impl Api {
    async fn start() -> Self {
        let cfg = TestConfig::new().await;
        let pg = cfg.pg().await;
        let token = |name: &'static str, grant: Grant| {
            let pg = pg.clone();
            async move { api_tokens::add(&pg, name, &grant).await.unwrap().unwrap() }
        };
        let (agent, admin) = (
            token("agents", Grant::Agents(vec![])).await,
            token("console", Grant::Admin).await,
        );
        let settings = wafleet::api::ApiSettings {
            media_max_bytes: 1024,
            ..cfg.api_settings(
                Some(cfg.cipher()),
                // Nothing here fetches a customer's file.
                "http://127.0.0.1:9",
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Never shut down: it ends with the test's runtime (the database goes with `cfg`,
        // its connections forced closed).
        tokio::spawn(wafleet::api::run(
            settings,
            listener,
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        wait_healthy(&http, &url, "the API").await;
        Self {
            url,
            http,
            agent,
            admin,
            _cfg: cfg,
        }
    }

    /// `o`'s method on `path`, with `token` when given.
    fn request(
        &self,
        o: &Operation<'_>,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(o.method.as_bytes()).unwrap();
        let req = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `o` on its concrete path, with `token`, an idempotency key and a JSON body when given.
    async fn send(
        &self,
        doc: &Value,
        o: &Operation<'_>,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut req = self.request(o, &o.concrete_path(doc), token);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.unwrap()
    }
}

/// A response's status and body (JSON when it is JSON). An event stream is not read: its
/// status is all there is to see before it ends.
async fn answer(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    if res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|t| t == "text/event-stream")
    {
        return (status, Value::Null);
    }
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

#[tokio::test]
async fn every_operation_that_needs_a_token_answers_401_without_one_and_the_others_answer_without()
{
    let api = Api::start().await;
    let doc = document();
    let unknown = format!("wfa_{}", "0".repeat(64));
    for o in operations(&doc) {
        let name = o.name();
        if o.auth(&doc) == Auth::None {
            let res = api.send(&doc, &o, None, None, None).await;
            assert_eq!(res.status(), StatusCode::OK, "{name}");
            let served = res.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string();
            let ok = resolve(&doc, &o.op["responses"]["200"]);
            let types = ok["content"].as_object().expect("a documented body");
            assert!(
                types.keys().any(|t| served.starts_with(t.as_str())),
                "{name} answers {served}, documented {:?}",
                types.keys().collect::<Vec<_>>()
            );
            continue;
        }
        for token in [None, Some(unknown.as_str())] {
            let res = api.send(&doc, &o, token, None, None).await;
            let challenge = res.headers().get("www-authenticate").cloned();
            let (status, body) = answer(res).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} with {token:?}");
            assert_eq!(challenge.unwrap(), "Bearer", "{name} with {token:?}");
            assert_eq!(o.check(&doc, status, &body), Ok(()), "{name}: {body}");
        }
    }
}

#[tokio::test]
async fn only_the_operations_documented_for_admin_tokens_refuse_an_agents_token() {
    let api = Api::start().await;
    let doc = document();
    for o in operations(&doc) {
        let name = o.name();
        let auth = o.auth(&doc);
        if auth == Auth::None {
            continue;
        }
        let example = o.body(&doc).map(|(_, example)| example);
        let (status, body) =
            answer(api.send(&doc, &o, Some(&api.agent), None, example).await).await;
        assert_eq!(o.check(&doc, status, &body), Ok(()), "{name}: {body}");
        if auth == Auth::Admin {
            assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
        } else {
            assert!(
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status),
                "{name} refused an agents' token: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn an_id_that_is_not_a_whole_number_answers_400_in_plain_text_as_documented() {
    let api = Api::start().await;
    let doc = document();
    let mut seen = 0;
    for o in operations(&doc) {
        let path = o.path_with(&doc, Some("not-a-number"));
        if path == o.concrete_path(&doc) {
            continue;
        }
        seen += 1;
        let res = api
            .request(&o, &path, Some(&api.admin))
            .send()
            .await
            .unwrap();
        assert!(
            res.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let (status, body) = answer(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(o.check(&doc, status, &body), Ok(()), "{path}: {body}");
    }
    assert!(seen >= 6, "only {seen} operations take an id");
}

#[tokio::test]
async fn the_api_serves_its_openapi_document_byte_for_byte() {
    let api = Api::start().await;
    let doc = document();
    let served = operations(&doc)
        .into_iter()
        .find(|o| (o.method.as_str(), o.path) == ("GET", "/api/v1/openapi.yaml"))
        .expect("the document documents itself");
    let res = api.send(&doc, &served, None, None, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[reqwest::header::CONTENT_TYPE],
        "application/yaml"
    );
    assert_eq!(res.bytes().await.unwrap(), DOCUMENT.as_bytes());
}

/// Whether a property's schema lets it be `null`.
fn nullable(schema: &Value) -> bool {
    match &schema["type"] {
        Value::Array(types) => types.contains(&json!("null")),
        t => t == "null",
    }
}

#[tokio::test]
async fn request_bodies_query_enums_and_idempotency_keys_are_taken_as_documented() {
    let api = Api::start().await;
    let doc = document();
    // Each request its own key: a key reused for another body would answer 409.
    let key = || uuid::Uuid::new_v4().to_string();
    for o in operations(&doc) {
        let name = o.name();
        let token = Some(api.admin.as_str());
        let body = o.body(&doc);
        // Where a key is documented it is needed (or `reference` in the body).
        if o.reads_header(&doc, "Idempotency-Key") {
            let example = body.map(|(_, example)| example);
            let (status, reply) = answer(api.send(&doc, &o, token, None, example).await).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name} without a key");
            assert_eq!(o.check(&doc, status, &reply), Ok(()), "{name}: {reply}");
            let error = reply["error"].as_str().unwrap_or_default();
            assert!(error.contains("Idempotency-Key"), "{name}: {error}");
        }
        // A query parameter's documented values are taken, any other is refused.
        for p in o.parameters(&doc) {
            let Some(values) = p["schema"]["enum"]
                .as_array()
                .filter(|_| p["in"] == "query")
            else {
                continue;
            };
            let param = p["name"].as_str().unwrap();
            for value in values.iter().chain([&json!("not-a-documented-value")]) {
                let path = format!(
                    "{}?{param}={}",
                    o.concrete_path(&doc),
                    value.as_str().unwrap()
                );
                let res = api.request(&o, &path, token).send().await.unwrap();
                let (status, body) = answer(res).await;
                assert_eq!(
                    o.check(&doc, status, &body),
                    Ok(()),
                    "{name} {path}: {body}"
                );
                assert_eq!(
                    status == StatusCode::BAD_REQUEST,
                    !values.contains(value),
                    "{name} {path}: {status}"
                );
            }
        }

        let Some((schema, example)) = body else {
            continue;
        };
        // What the handler says of `body`, with a fresh key where it reads one.
        let with_key = o.reads_header(&doc, "Idempotency-Key");
        let send = |body: Value| {
            let (api, doc, o) = (&api, &doc, &o);
            let key = with_key.then(key);
            async move { answer(api.send(doc, o, token, key.as_deref(), Some(&body)).await).await }
        };
        let taken = |what: &str, (status, body): (StatusCode, Value)| {
            assert_eq!(
                o.check(&doc, status, &body),
                Ok(()),
                "{name}, {what}: {body}"
            );
            assert_ne!(status, StatusCode::BAD_REQUEST, "{name}, {what}: {body}");
        };
        let refused = |what: &str, naming: &str, (status, body): (StatusCode, Value)| {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}, {what}: {body}");
            assert_eq!(
                o.check(&doc, status, &body),
                Ok(()),
                "{name}, {what}: {body}"
            );
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(naming), "{name}, {what}: {error}");
        };
        assert!(example.is_object(), "{name} documents no example body");
        taken("the example", send(example.clone()).await);

        let mut extra = example.clone();
        extra[UNKNOWN_FIELD] = json!(1);
        if schema["additionalProperties"] == false {
            refused("an unknown field", "unknown field", send(extra).await);
        } else {
            taken("an unknown field", send(extra).await);
        }

        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let properties = schema["properties"].as_object().expect("properties");
        for (field, property) in properties {
            let property = resolve(&doc, property);
            let mut without = example.clone();
            without.as_object_mut().unwrap().remove(field);
            let what = format!("without {field}");
            if required.contains(&field.as_str()) {
                refused(
                    &what,
                    &format!("missing field `{field}`"),
                    send(without).await,
                );
            } else {
                taken(&what, send(without).await);
            }

            let mut null = example.clone();
            null[field] = Value::Null;
            let what = format!("{field} null");
            if nullable(property) {
                taken(&what, send(null).await);
            } else {
                refused(&what, "", send(null).await);
            }

            if let Some(values) = property["enum"].as_array() {
                for value in values.iter().filter(|v| !v.is_null()) {
                    let mut other = example.clone();
                    other[field] = value.clone();
                    taken(&format!("{field} {value}"), send(other).await);
                }
                let mut other = example.clone();
                other[field] = json!("not-a-documented-value");
                let what = format!("{field} outside its enum");
                refused(&what, "not-a-documented-value", send(other).await);
            }
        }
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case_as_the_document_says() {
    let api = Api::start().await;
    let doc = document();
    for spelt in ["Bearer", "bearer", "BEARER"] {
        let res = api
            .http
            .get(format!("{}/api/v1/conversations", api.url))
            .header("authorization", format!("{spelt} {}", api.agent))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{spelt}");
    }
    // A client written from the document must not be told otherwise.
    let scheme = doc["components"]["securitySchemes"]["agentToken"]["description"]
        .as_str()
        .unwrap();
    assert!(!scheme.contains("case-sensitively"), "{scheme}");
    assert!(scheme.contains("in any case"), "{scheme}");
}
