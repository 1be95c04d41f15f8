"""The `accounts` participant: opens an account for each new member, closes it on compensation."""

from sqlalchemy import Column, MetaData, String, Table, delete

from participants.runtime import Participant, run, upsert

metadata = MetaData()
accounts_table = Table(
    "accounts", metadata,
    Column("member_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
)
accounts = Participant("accounts", metadata=metadata)


@accounts.on_event("member.joined")
def open_account(message, ctx):
    member = message.data["member_id"]
    account_id = f"acc-{member}"
    # ctx.conn is this message's transaction: the account, the processed-message record and the
    # event below commit together. A repeated member.joined inserts nothing twice.
    ctx.conn.execute(upsert(ctx.conn, accounts_table).values(member_id=member, account_id=account_id)
                     .on_conflict_do_nothing())
    return [ctx.event("account.created", {"member_id": member, "account_id": account_id})]


@accounts.on_command("account.delete")
def close_account(message, ctx):
    # A compensation command carries its own fields, the data of the event it undoes
    # (account.created: member_id, account_id) and a `reason`.
    member = message.data["member_id"]
    ctx.conn.execute(delete(accounts_table).where(accounts_table.c.member_id == member))
    return [ctx.event("account.deleted", {"member_id": member})]


if __name__ == "__main__":
    run(accounts)
