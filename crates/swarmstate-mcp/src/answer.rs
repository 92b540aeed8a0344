//! Tool results as compact JSON text, and errors as tool errors a model can read.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value};

use swarmstate_core::Error;
use swarmstate_http::wire::Problem;

/// A tool's outcome: its result, or the error to show the model.
pub(crate) type Answer = Result<Value, Failure>;

/// An error for the model: a stable `error` kind, a `message`, and fields.
#[derive(Debug)]
pub(crate) struct Failure(Map<String, Value>);

impl Failure {
    /// An error of the caller's making that never reached the store: `invalid_input`.
    pub(crate) fn bad(message: impl Into<String>) -> Failure {
        Failure::from(Error::InvalidInput {
            message: message.into(),
        })
    }

    /// A holding this session does not have.
    pub(crate) fn not_held(what: &str) -> Failure {
        let mut fields = Map::new();
        fields.insert("error".into(), "not_held".into());
        fields.insert(
            "message".into(),
            format!(
                "{what} is not held by this session: it was released, lost or expired, or it \
                 belongs to another session; acquire it again before acting as its holder"
            )
            .into(),
        );
        Failure(fields)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let problem = serde_json::to_value(Problem::from_error(&err)).unwrap_or_default();
        let mut fields = Map::new();
        fields.insert("error".into(), err.kind().as_str().into());
        fields.insert("message".into(), err.to_string().into());
        if let Value::Object(problem) = problem {
            // The fields of the kind; the HTTP envelope means nothing to a model.
            for (name, value) in problem {
                let envelope = matches!(
                    name.as_str(),
                    "type" | "title" | "status" | "detail" | "kind" | "message"
                );
                if !envelope && !value.is_null() {
                    fields.insert(name, value);
                }
            }
        }
        Failure(fields)
    }
}

/// The MCP result of an answer: its JSON as text, flagged as an error when it is one.
pub(crate) fn result(answer: Answer) -> CallToolResult {
    match answer {
        Ok(value) => CallToolResult::success(vec![ContentBlock::text(value.to_string())]),
        Err(Failure(fields)) => {
            CallToolResult::error(vec![ContentBlock::text(Value::Object(fields).to_string())])
        }
    }
}
