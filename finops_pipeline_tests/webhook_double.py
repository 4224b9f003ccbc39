"""A Slack-compatible incoming webhook on loopback: what the alert sensor posts to."""

import json

from finops_pipeline_tests.http_double import HttpDouble

SECRET_PATH = "/services/T000/B000/very-secret-token"


class Receiver(HttpDouble):
    """Takes `{"text": ...}` at SECRET_PATH and answers `status` (200 unless a test takes it down)."""

    def __init__(self):
        super().__init__()
        self.status = 200
        self.messages: list[str] = []

    @property
    def webhook_url(self) -> str:
        return self.url + SECRET_PATH

    def respond(self, path, query, headers):
        if self.status == 200 and path == SECRET_PATH:
            self.messages.append(json.loads(query["body"][0])["text"])
            return 200, {"Content-Type": "text/plain"}, b"ok"
        return self.status, {"Content-Type": "text/plain"}, b"no_service"
