"""The management API and its declarative file: stores, subscriptions and deliveries for staff,
scripted (`/manage/v1/...`, `manage.py hub*`) instead of clicked in the admin."""
