"""Checks recorded provider exchanges against the provider's published OpenAPI definitions.

Usage: python openapi_check.py DEFINITIONS.json EXCHANGES.json

EXCHANGES is the sandbox's GET /_sandbox/requests answer: each request's method, path, decoded
query, JSON body, and the status and JSON answer it got. For each exchange the operation is found
by method and path template; the request is validated (each query and path parameter against its
schema, after reading the text as the type the schema wants, as FastAPI does; the body against
the request body schema) and the answer against the response schema of its status. Prints one
JSON object: {"checked": n, "problems": [...]}, where a problem is an answer that does not
validate, or a request whose validity disagrees with the status it got (422 exactly when the
definitions refuse it).
"""
import json
import sys

import jsonschema


def validator(doc, schema):
    root = dict(schema)
    root["components"] = doc["components"]
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def find(doc, method, path):
    want = path.rstrip("/").split("/")
    for template, item in doc["paths"].items():
        parts = template.split("/")
        if len(parts) != len(want) or method.lower() not in item:
            continue
        params = {}
        ok = True
        for t, w in zip(parts, want):
            if t.startswith("{") and t.endswith("}"):
                params[t[1:-1]] = w
            elif t != w:
                ok = False
                break
        if ok:
            return item[method.lower()], params
    return None, None


def typed(doc, schema, text):
    """The query text as FastAPI reads it for this schema: an integer when the schema admits
    one and the text is one, else the text."""
    def admits(s, t):
        if "$ref" in s:
            s = doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]]
        if s.get("type") == t:
            return True
        return any(admits(a, t) for a in s.get("anyOf", []))

    for t, parse in (("integer", int), ("number", float)):
        if admits(schema, t):
            try:
                return parse(text)
            except ValueError:
                pass
    return text


def request_errors(doc, op, path_params, query, body):
    errors = []
    for p in op.get("parameters", []):
        name, where = p["name"], p["in"]
        given = query.get(name) if where == "query" else path_params.get(name)
        if where not in ("query", "path"):
            continue
        if given is None:
            if p.get("required"):
                errors.append(f"{where}.{name}: missing")
            continue
        v = validator(doc, p["schema"])
        for e in v.iter_errors(typed(doc, p["schema"], given)):
            errors.append(f"{where}.{name}: {e.message}")
    rb = op.get("requestBody")
    if rb:
        schema = rb["content"]["application/json"]["schema"]
        if body is None:
            errors.append("body: missing")
        else:
            for e in validator(doc, schema).iter_errors(body):
                errors.append(f"body{list(e.absolute_path)}: {e.message}")
    return errors


def main():
    doc = json.load(open(sys.argv[1]))
    exchanges = json.load(open(sys.argv[2]))["requests"]
    problems, checked = [], 0
    for x in exchanges:
        op, params = find(doc, x["method"], x["path"])
        if op is None:
            problems.append(f"{x['method']} {x['path']}: no such operation in the definitions")
            continue
        checked += 1
        status = x.get("status")
        errors = request_errors(doc, op, params, x.get("query") or {}, x.get("body"))
        where = f"{x['method']} {x['path']} {x.get('query')}"
        if errors and status != 422:
            problems.append(f"{where}: the definitions refuse it ({errors}) but it got {status}")
        if not errors and status == 422:
            problems.append(f"{where}: valid by the definitions but answered 422: {x.get('answer')}")
        resp = op["responses"].get(str(status), {})
        schema = resp.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            for e in validator(doc, schema).iter_errors(x.get("answer")):
                problems.append(
                    f"{where}: the {status} answer breaks its schema at "
                    f"{list(e.absolute_path)}: {e.message}"
                )
    print(json.dumps({"checked": checked, "problems": problems}))


main()
