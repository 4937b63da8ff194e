"""The guard's OpenAPI 3.1 description, written by hand in one place (the routes are in `guard.app`)."""

from __future__ import annotations

from typing import Any

from bastion.guard.backend import ModelInfo


def _nested(shape: tuple[int, ...], low: float, high: float) -> dict[str, Any]:
    """A JSON schema for one input: nested arrays of numbers in the model's bounds."""
    schema: dict[str, Any] = {"type": "number", "minimum": low, "maximum": high}
    for size in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    return schema


def openapi_spec(info: ModelInfo) -> dict[str, Any]:
    low, high = info.bounds
    error = {"description": "refused (one-line reason)",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    refusals = {str(code): error for code in (400, 401, 403, 413, 422, 429)}
    describe = {"summary": "Describe the model (Bastion's HTTP protocol)",
                "parameters": [{"$ref": "#/components/parameters/ApiKey"}],
                "responses": {"200": {"description": "the model's description", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Info"}}}}, "401": error}}
    predict = {"summary": "Predict a batch", "parameters": [{"$ref": "#/components/parameters/ApiKey"}],
               "requestBody": {"required": True, "content": {"application/json": {
                   "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
               "responses": {"200": {"description": "probabilities or labels, one per input",
                                     "content": {"application/json": {"schema": {
                                         "$ref": "#/components/schemas/Prediction"}}}}, **refusals}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "bastion guard", "version": "1", "description": "Bastion's classifier protocol behind a "
                 "policy of rules (docs/guard.md)."},
        "paths": {
            "/predict": {"get": describe, "post": predict},
            "/": {"get": describe, "post": predict},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
        "components": {
            "parameters": {"ApiKey": {"name": "api_key", "in": "query", "required": False,
                                      "schema": {"type": "string"}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "header": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {
                "Info": {"type": "object", "required": ["n_classes", "input_shape", "output"], "properties": {
                    "n_classes": {"type": "integer"}, "input_shape": {"type": "array", "items": {"type": "integer"}},
                    "output": {"enum": ["probabilities", "labels"]},
                    "bounds": {"type": "array", "items": {"type": "number"}}}},
                "PredictRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "inputs": {"type": "array", "minItems": 1, "items": _nested(info.input_shape, low, high)}}},
                "Prediction": {"type": "object", "properties": {
                    "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    "labels": {"type": "array", "items": {"type": "integer"}}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            },
        },
    }


def openapi_llm_spec() -> dict[str, Any]:
    """The OpenAI-compatible subset the guard serves for a language model (`guard.llm_app`)."""
    error = {"description": "refused (OpenAI-style error object)",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool"]}, "content": {"type": "string"}}}
    request = {"type": "object", "required": ["messages"], "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": message},
        "max_tokens": {"type": "integer", "minimum": 1}, "logprobs": {"type": "boolean"},
        "stream": {"const": False}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
        "seed": {"type": "integer"}}}
    completion = {"type": "object", "required": ["choices", "usage"], "properties": {
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "message": message, "finish_reason": {"enum": ["stop", "length", "content_filter"]}}}},
        "usage": {"type": "object", "properties": {k: {"type": "integer"} for k in (
            "prompt_tokens", "completion_tokens", "total_tokens")}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "bastion guard (language model)", "version": "1",
                 "description": "OpenAI-compatible chat completions behind a policy of rules (docs/guard.md)."},
        "paths": {
            "/v1/models": {"get": {"summary": "The served model", "responses": {"200": {"description": "list"},
                                                                                 "401": error}}},
            "/v1/chat/completions": {"post": {
                "summary": "One chat completion (non-streaming)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ChatRequest"}}}},
                "responses": {"200": {"description": "the reply (finish_reason content_filter when a rule "
                                                     "withheld it)", "content": {"application/json": {"schema": {
                                                         "$ref": "#/components/schemas/ChatCompletion"}}}},
                              **{str(c): error for c in (400, 401, 413, 429)}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"ChatRequest": request, "ChatCompletion": completion,
                        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                            "type": "object", "properties": {"message": {"type": "string"},
                                                             "code": {"type": "string"}}}}}},
        },
    }
