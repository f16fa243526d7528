"""webhook secrets encrypted at rest: api_keys.webhook_secret becomes TEXT holding a Fernet token (issue 23)

Existing plaintext secrets (``whsec_…``) are encrypted with the database's key
(:func:`lift3d.service.db.encryption.cipher_for_url`: ``LIFT3D_ENCRYPTION_KEY``, or a SQLite database's local key
file); values already encrypted are left alone. Downgrade decrypts them back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 12:30:00
"""

from alembic import op
import sqlalchemy as sa

from lift3d.service.db.encryption import cipher_of


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_PLAINTEXT_PREFIX = "whsec_"  # every secret lift3d makes starts with it; a Fernet token starts with "gAAAAA"


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:  # SQLite: a table rebuild (lift3d.service.db.migrate)
        batch.alter_column('webhook_secret', existing_type=sa.String(length=100), type_=sa.Text(),
                           existing_nullable=False)
    bind = op.get_bind()
    cipher = cipher_of(bind.dialect)
    rows = bind.execute(sa.text("SELECT id, webhook_secret FROM api_keys")).all()
    for key_id, secret in rows:
        if secret.startswith(_PLAINTEXT_PREFIX):
            bind.execute(sa.text("UPDATE api_keys SET webhook_secret = :token WHERE id = :id"),
                         {"token": cipher.encrypt(secret), "id": key_id})


def downgrade() -> None:
    bind = op.get_bind()
    cipher = cipher_of(bind.dialect)
    rows = bind.execute(sa.text("SELECT id, webhook_secret FROM api_keys")).all()
    for key_id, token in rows:
        if not token.startswith(_PLAINTEXT_PREFIX):
            bind.execute(sa.text("UPDATE api_keys SET webhook_secret = :secret WHERE id = :id"),
                         {"secret": cipher.decrypt(token), "id": key_id})
    with op.batch_alter_table('api_keys') as batch:
        batch.alter_column('webhook_secret', existing_type=sa.Text(), type_=sa.String(length=100),
                           existing_nullable=False)
