"""The `mailer` participant: welcomes a member once both the sign-up and the account exist."""

from participants.runtime import Participant, run

mailer = Participant("mailer")


@mailer.join("welcome", "member.joined", "account.created")   # in either order, once both arrived
def send_welcome(messages, ctx):
    member = messages["member.joined"].data
    if member["email"].endswith("@bounce.example"):
        return [ctx.event("welcome.failed", {"member_id": member["member_id"],
                                             "reason": f"{member['email']} bounced"})]
    return [ctx.event("welcome.sent", {"member_id": member["member_id"], "email": member["email"]})]


if __name__ == "__main__":
    run(mailer)
