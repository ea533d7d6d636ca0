"""Status sync to Google Firestore (filled in with the presence work)."""


async def check() -> None:
    raise RuntimeError("Firestore sync is not configured")
