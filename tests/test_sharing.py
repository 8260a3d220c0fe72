"""Wall displays and share links: scope, expiry, revocation, guess limiting, hashing, headers, logs."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from dashboard.grid import datetime_to_cursor
from dashboard.logfilters import RedactTokens
from dashboard.models import Board, BoardMember, DisplayToken, ShareLink, hash_token, new_token
from dashboard.walls import wall_layout
from screenshots.models import Account, Instance, InstanceState
from tests.test_views import add_capture, make_instances, tile_ids

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _redis(redis: Any) -> None:
    """Guess counters live in Redis: a fresh one per test."""


@pytest.fixture
def fleet() -> list[Instance]:
    account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
    instances = make_instances(account, 6)
    for instance in instances:
        add_capture(instance, seed=instance.pk)
    return instances


@pytest.fixture
def board(fleet: list[Instance]) -> Board:
    board = Board.objects.create(name="Front", slug="front")
    for position, instance in enumerate([fleet[2], fleet[0]]):
        BoardMember.objects.create(board=board, instance=instance, position=position)
    return board


def make_link(instances: list[Instance] | None = None, board: Board | None = None, **fields: Any) -> str:
    token, token_hash = new_token()
    link = ShareLink.objects.create(token_hash=token_hash, board=board, **fields)
    if instances:
        link.instances.set(instances)
    return token


def operator() -> Client:
    user = User.objects.create_user("op", password="pw-123456789")
    user.groups.add(Group.objects.get(name="Operators"))
    client = Client()
    client.force_login(user)
    return client


class BoardTestCase:
    def test_a_picked_board_keeps_its_order(self, board: Board, fleet: list[Instance]) -> None:
        assert list(board.instances()) == [fleet[2], fleet[0]]

    def test_a_rule_board_follows_tags_and_region(self, fleet: list[Instance]) -> None:
        board = Board.objects.create(name="Prod", slug="prod", rule_tag="env=prod", rule_region="cn-hangzhou")
        assert set(board.instances()) == {fleet[1], fleet[3], fleet[5]}

    def test_the_staff_grid_filters_by_board(self, board: Board, fleet: list[Instance], client: Client) -> None:
        client.force_login(User.objects.create_user("v", password="pw-123456789"))
        assert tile_ids(client.get("/?board=front").content.decode()) == [str(fleet[0].pk), str(fleet[2].pk)]

    @pytest.mark.parametrize("count", range(1, 101))
    def test_the_layout_fits_any_count_up_to_100(self, count: int) -> None:
        cols, rows = wall_layout(count)
        assert cols * rows >= count
        assert cols * (rows - 1) < count  # no empty last row
        assert cols <= 14 and rows <= 12  # the stylesheet has classes for these


class ShareLinkTestCase:
    def test_the_page_shows_only_the_shared_instances(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        response = client.get(f"/s/{token}/")
        html = response.content.decode()
        assert response.status_code == 200
        assert tile_ids(html) == [str(fleet[1].pk)]
        for other in fleet[2:]:
            assert other.instance_id not in html
        assert "/instances/" not in html  # no way into staff pages

    def test_nothing_outside_the_scope_is_reachable(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        other = InstanceState.objects.get(pk=fleet[2].pk).latest_capture
        mine = InstanceState.objects.get(pk=fleet[1].pk).latest_capture
        response = client.get(f"/s/{token}/captures/{mine.pk}/{mine.sha256}/thumb")
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"  # revocation must not leave them in browser caches
        assert client.get(f"/s/{token}/captures/{other.pk}/{other.sha256}/thumb").status_code == 404
        assert client.get(f"/s/{token}/captures/{other.pk}/{other.sha256}/full").status_code == 404
        # Staff pages and the staff image URLs still want a login.
        assert client.get(f"/captures/{other.pk}/{other.sha256}/thumb.jpg").status_code == 302
        assert client.get(f"/instances/{fleet[2].pk}/").status_code == 302
        # The poll answers for the scope only, whatever the query string says.
        cursor = datetime_to_cursor(timezone.now() - timedelta(hours=1))
        html = client.get(f"/s/{token}/poll/?cursor={cursor}&q={fleet[2].instance_id}").content.decode()
        assert tile_ids(html) == [str(fleet[1].pk)]

    def test_a_board_link_follows_the_board(self, board: Board, fleet: list[Instance], client: Client) -> None:
        token = make_link(board=board)
        assert tile_ids(client.get(f"/s/{token}/").content.decode()) == [str(fleet[2].pk), str(fleet[0].pk)]

    def test_poll_is_204_when_nothing_changed(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        assert client.get(f"/s/{token}/poll/?cursor={datetime_to_cursor(timezone.now())}").status_code == 204

    def test_expired_and_revoked_links_answer_410(self, fleet: list[Instance], client: Client) -> None:
        expired = make_link(instances=[fleet[1]], expires_at=timezone.now() - timedelta(seconds=1))
        revoked = make_link(instances=[fleet[1]], revoked_at=timezone.now())
        for token in (expired, revoked):
            for path in ("", "poll/"):
                response = client.get(f"/s/{token}/{path}")
                assert response.status_code == 410
                assert fleet[1].instance_id not in response.content.decode()

    def test_unknown_forged_and_truncated_tokens_answer_404(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        for forged in (token[:-1], token + "x", "A" * len(token), "short", token.upper()):
            assert client.get(f"/s/{forged}/").status_code == 404

    def test_guessing_is_rate_limited(self, fleet: list[Instance], client: Client, settings: Any) -> None:
        settings.TOKEN_GUESS_LIMIT = 5
        token = make_link(instances=[fleet[1]])
        for n in range(5):
            assert client.get(f"/s/guess-{n:020d}/").status_code == 404
        response = client.get("/s/guess-99999999999999999999/")
        assert response.status_code == 429
        assert response["Retry-After"]
        # Even a right token waits now: a guesser learns nothing from the answer.
        assert client.get(f"/s/{token}/").status_code == 429
        # Another address is not affected.
        assert client.get(f"/s/{token}/", REMOTE_ADDR="10.9.9.9").status_code == 200

    def test_only_a_hash_of_the_token_is_stored(self, fleet: list[Instance]) -> None:
        token = make_link(instances=[fleet[1]])
        link = ShareLink.objects.get()
        assert link.token_hash == hash_token(token)
        assert token not in str(ShareLink.objects.values().get())
        assert len(token) >= 22  # at least 128 bits in URL-safe base64

    def test_pages_send_no_referrer_and_noindex(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        for path in (f"/s/{token}/", f"/s/{token}/poll/", "/s/unknown-token-000000000000/"):
            response = client.get(path)
            assert response["Referrer-Policy"] == "no-referrer", path
            assert "noindex" in response["X-Robots-Tag"], path

    def test_views_are_counted_but_link_previews_are_not(self, fleet: list[Instance], client: Client) -> None:
        token = make_link(instances=[fleet[1]])
        client.get(f"/s/{token}/", HTTP_USER_AGENT="Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)")
        client.get(f"/s/{token}/", HTTP_USER_AGENT="Mozilla/5.0 (compatible; Discordbot/2.0)")
        client.head(f"/s/{token}/")
        link = ShareLink.objects.get()
        assert link.view_count == 0 and link.is_usable()
        client.get(f"/s/{token}/", HTTP_USER_AGENT="Mozilla/5.0 (X11; Linux x86_64) Chrome/156")
        link.refresh_from_db()
        assert link.view_count == 1 and link.last_viewed_at is not None

    def test_tokens_never_reach_the_logs(self) -> None:
        record = logging.LogRecord("django.server", logging.INFO, __file__, 1, '"GET /s/%s/poll/ HTTP/1.1" 200',
                                   ("Zx8_secret-token-value-123456",), None)
        RedactTokens().filter(record)
        assert "Zx8_secret" not in record.getMessage()
        assert "/s/<token>/poll/" in record.getMessage()


class ShareLinkManagementTestCase:
    def test_an_operator_creates_a_link_and_sees_the_token_once(self, fleet: list[Instance]) -> None:
        client = operator()
        response = client.post("/shares/", {"instances": [fleet[1].pk, fleet[2].pk], "hours": "24",
                                            "note": "incident 4711"})
        html = response.content.decode()
        url = re.search(r'value="(http://testserver/s/[^"]+/)"', html).group(1)
        token = url.rsplit("/", 2)[1]
        link = ShareLink.objects.get()
        assert link.token_hash == hash_token(token)
        assert 23 * 3600 < (link.expires_at - timezone.now()).total_seconds() <= 24 * 3600
        assert "incident 4711" in html
        listing = client.get("/shares/").content.decode()
        assert token not in listing and "incident 4711" in listing and "op" in listing
        assert Client().get(f"/s/{token}/").status_code == 200

    @pytest.mark.parametrize(("data", "message"), [
        ({"hours": "24"}, "Share either a board or some instances."),
        ({"hours": "100000", "instances": ["1"]}, "at most 168 hours"),
        ({"hours": "0", "instances": ["1"]}, "greater than or equal to 1"),
        ({"hours": "abc", "instances": ["1"]}, "Enter a whole number"),
        ({"hours": "24", "instances": ["999999"]}, "Select a valid choice"),
        ({"hours": "24", "note": "x" * 500, "instances": ["1"]}, "at most 200 characters"),
    ])
    def test_bad_values_get_a_message(self, fleet: list[Instance], data: dict, message: str) -> None:
        if data.get("instances") == ["1"]:
            data = {**data, "instances": [str(fleet[0].pk)]}
        response = operator().post("/shares/", data)
        assert response.status_code == 200
        assert message in response.content.decode()
        assert not ShareLink.objects.exists()

    def test_revocation_ends_the_link_at_once(self, fleet: list[Instance]) -> None:
        token = make_link(instances=[fleet[1]])
        link = ShareLink.objects.get()
        client = operator()
        assert client.post(f"/shares/{link.pk}/revoke/").status_code == 302
        assert Client().get(f"/s/{token}/").status_code == 410
        assert ShareLink.objects.get().revoked_by.username == "op"

    def test_a_viewer_cannot_manage_links(self, fleet: list[Instance]) -> None:
        client = Client()
        client.force_login(User.objects.create_user("v", password="pw-123456789"))
        assert client.get("/shares/").status_code == 403
        assert client.post("/shares/", {"instances": [fleet[0].pk], "hours": "1"}).status_code == 403


class DisplayTokenTestCase:
    def _display(self, *boards: Board, **fields: Any) -> str:
        token, token_hash = new_token()
        display = DisplayToken.objects.create(name="NOC left", token_hash=token_hash, **fields)
        display.boards.set(boards)
        return token

    def test_the_link_moves_the_token_into_a_cookie(self, board: Board, client: Client) -> None:
        token = self._display(board)
        response = client.get(f"/display/{token}/")
        assert response.status_code == 302 and response["Location"] == "/wall/front/"
        cookie = response.cookies["cw_display"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        response = client.get("/wall/front/")
        assert response.status_code == 200
        assert len(tile_ids(response.content.decode())) == 2

    def test_a_display_sees_only_its_boards(self, board: Board, fleet: list[Instance], client: Client) -> None:
        other = Board.objects.create(name="Back", slug="back")
        BoardMember.objects.create(board=other, instance=fleet[4])
        client.get(f"/display/{self._display(board)}/")
        assert client.get("/wall/back/").status_code == 404
        assert client.get("/wall/back/poll/").status_code == 404
        capture = InstanceState.objects.get(pk=fleet[4].pk).latest_capture
        assert client.get(f"/wall/front/captures/{capture.pk}/{capture.sha256}/thumb.jpg").status_code == 404
        assert client.get(f"/wall/back/captures/{capture.pk}/{capture.sha256}/thumb.jpg").status_code == 404
        assert client.get("/").status_code == 302  # no staff pages
        mine = InstanceState.objects.get(pk=fleet[0].pk).latest_capture
        assert client.get(f"/wall/front/captures/{mine.pk}/{mine.sha256}/thumb.jpg").status_code == 200

    def test_a_revoked_display_is_locked_out(self, board: Board, client: Client) -> None:
        token = self._display(board)
        client.get(f"/display/{token}/")
        DisplayToken.objects.update(revoked_at=timezone.now())
        assert client.get("/wall/front/").status_code == 302  # to the login page
        assert client.get("/wall/front/poll/").status_code == 404
        assert Client().get(f"/display/{token}/").status_code == 410

    def test_the_wall_poll_says_204_and_carries_the_version(self, board: Board, client: Client,
                                                            settings: Any) -> None:
        settings.APP_VERSION = "42"
        client.get(f"/display/{self._display(board)}/")
        InstanceState.objects.update(changed_at=timezone.now() - timedelta(minutes=1))
        response = client.get(f"/wall/front/poll/?cursor={datetime_to_cursor(timezone.now())}")
        assert response.status_code == 204
        assert response["X-Console-Wall-Version"] == "42"
        page = client.get("/wall/front/").content.decode()
        assert 'data-version="42"' in page

    def test_a_playlist_display_links_to_its_next_board(self, board: Board, client: Client) -> None:
        other = Board.objects.create(name="Back", slug="back")
        client.get(f"/display/{self._display(board, other, rotate_seconds=30)}/")
        html = client.get("/wall/back/").content.decode()
        assert 'data-rotate-url="/wall/front/"' in html and 'data-rotate-seconds="30"' in html

    def test_staff_can_open_any_wall(self, board: Board) -> None:
        client = Client()
        client.force_login(User.objects.create_user("v", password="pw-123456789"))
        assert client.get("/wall/front/").status_code == 200

    def test_display_guessing_is_rate_limited(self, client: Client, settings: Any) -> None:
        settings.TOKEN_GUESS_LIMIT = 3
        codes = [client.get(f"/display/guess-{n:020d}/").status_code for n in range(4)]
        assert codes == [404, 404, 404, 429]
